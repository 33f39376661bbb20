import io

from dali_resizer.progress import ProgressBar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_draws_on_a_terminal():
    out = Terminal()
    bar = ProgressBar(4, "epoch 0", stream=out, width=8, unit="step", min_interval=0)
    for _ in range(4):
        bar.update(1, "loss 0.5")
    bar.close()
    text = out.getvalue()
    assert "epoch 0 [##......] 1/4 loss 0.5" in text
    assert "[########] 4/4" in text and text.endswith("\n")


def test_clear_erases_the_line():
    out = Terminal()
    bar = ProgressBar(2, "x", stream=out, min_interval=0)
    bar.update(2)
    bar.close(clear=True)
    assert out.getvalue().endswith("\r\033[K")


def test_silent_when_not_a_terminal():
    out = io.StringIO()
    bar = ProgressBar(3, "x", stream=out, min_interval=0)
    bar.update(3)
    bar.close()
    assert out.getvalue() == "" and bar.done == 3
