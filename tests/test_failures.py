"""One reading of DALI's errors (``dali_resizer.samples.classify_failure``), against messages DALI 2.4
printed: the GPU failing, the storage failing, a pipeline stopping on a sample (named or not), and an
error that is not DALI's."""

import pytest

from dali_resizer.samples import DaliFailure, classify_failure

_HEAD = ("Critical error in pipeline:\nCritical error in pipeline:\nError in CPU operator `nvidia.dali.fn.{op}`,\n"
         "which was used in the pipeline definition with the following traceback:\n\n  File \"train.py\", line 9, "
         "in p\n\nencountered:\n\n")
_TAIL = "\nCurrent pipeline object is no longer valid.\nCurrent pipeline object is no longer valid."

RECORDED = {
    # fn.decoders.image on a truncated JPEG and on HTML named .jpg (DALI 2.4, CPU)
    "truncated": (_HEAD.format(op="decoders.image") + "nvImageCodec failure: '#3'" + _TAIL,
                  DaliFailure("sample", "nvImageCodec failure: '#3'")),
    # fn.readers.file on a file removed after listing
    "missing file": (_HEAD.format(op="readers.file") + "File mapping failed: missing.jpg\nC++ context: "
                     "[/opt/dali/dali/util/mmaped_file.cc:105] " + _TAIL,
                     DaliFailure("sample", "File mapping failed: missing.jpg")),
    # the reader thread's race seen in CI: the reason is lost
    "no reason": ("Critical error in pipeline:\nencountered: : Current pipeline object is no longer valid.",
                  DaliFailure("sample", "no reason given")),
    # a sample DALI names itself
    "named": ("Critical error in pipeline:\nError in CPU operator `nvidia.dali.fn.decoders.image`,\nFailed to decode "
              "sample #2 : /data/cat/a.jpg", DaliFailure("sample", "Failed to decode sample #2", "/data/cat/a.jpg")),
    # the GPU
    "out of memory": ("Critical error in pipeline:\nCUDA runtime API error cudaErrorMemoryAllocation (2):\nout of "
                      "memory", DaliFailure("device", "CUDA runtime API error cudaErrorMemoryAllocation (2):")),
    "allocation": ("Can't allocate 1073741824 bytes on device 0.",
                   DaliFailure("device", "Can't allocate 1073741824 bytes on device 0.")),
    "nvjpeg": ("Critical error in pipeline:\nnvJPEG error: NVJPEG_STATUS_ALLOCATOR_FAILURE",
               DaliFailure("device", "nvJPEG error: NVJPEG_STATUS_ALLOCATOR_FAILURE")),
    # the object store
    "s3 gone": (_HEAD.format(op="readers.webdataset") + "S3 Object not found: s3://b/train-000001.tar" + _TAIL,
                DaliFailure("storage", "S3 Object not found: s3://b/train-000001.tar")),
    "s3 down": (_HEAD.format(op="readers.webdataset") + "curlCode: 7, Could not connect to server" + _TAIL,
                DaliFailure("storage", "curlCode: 7, Could not connect to server")),
    # a WebDataset index whose last line is cut
    "index": ('Critical error in pipeline:\nAssert on "components_stream >> component.offset >> component.size >> '
              'component.filename" failed: Malformed index file at "/d/train-000000.idx" line 4 - Could not find all '
              'necessary component parameters (offset, size or filename).',
              DaliFailure("index", 'Assert on "components_stream >> component.offset >> component.size >> '
                          'component.filename" failed: Malformed index file at "/d/train-000000.idx" line 4 - Could '
                          'not find all necessary component parameters (offset, size or filename).')),
    # not DALI's
    "other": ("index 3 is out of bounds for axis 0 with size 2",
              DaliFailure("other", "index 3 is out of bounds for axis 0 with size 2")),
}


@pytest.mark.parametrize("case", list(RECORDED))
def test_each_recorded_message_is_read_as_what_it_is(case):
    text, expected = RECORDED[case]
    assert classify_failure(RuntimeError(text)) == expected


def test_a_real_pipeline_failure_is_read_with_its_reason(tmp_path):
    """A pipeline DALI builds here, over a file removed after it was listed: a sample failure whose
    reason is DALI's own line, not the pipeline's frame around it."""
    from nvidia.dali import fn, pipeline_def

    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff")

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def reading():
        encoded, _ = fn.readers.file(files=[str(tmp_path / "a.jpg"), str(tmp_path / "gone.jpg")], name="Reader")
        return encoded

    pipe = reading()
    pipe.build()
    with pytest.raises(RuntimeError) as raised:
        pipe.run()
    failure = classify_failure(raised.value)
    assert failure.kind == "sample" and "gone.jpg" in failure.reason and "pipeline" not in failure.reason
