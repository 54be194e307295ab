"""Beam's FnApiRunner must not drop a bundle's input (docs/predict.md, Cluster; runs/notes.md,
"Element loss"): `runners.no_timed_flushes_on_fnapi`, applied by `runners.run_pipeline`."""

import time

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker import data_plane

from beam_pipelines import runners


def test_runner_input_stream_keeps_what_is_written_while_it_flushes(monkeypatch):
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", worker_handlers.DATA_BUFFER_TIME_LIMIT_MS)
    runners.no_timed_flushes_on_fnapi()
    delivered = []

    def send(data):  # the hand-off to the send queue: slow for a large protobuf or a full queue
        if data:
            time.sleep(0.2)
            delivered.append(len(data))

    # The stream FnApiRunner's data servicer opens for each bundle input it sends to a worker
    # (`_GrpcDataChannel.output_stream`), written chunk by chunk as `BundleManager._send_input_to_worker` does.
    stream = data_plane.ClosableOutputStream.create(send, send, worker_handlers.DATA_BUFFER_TIME_LIMIT_MS)
    chunk, written = b"x" * 100_000, 0
    end = time.monotonic() + 1.6  # past Beam's default timed flush (1 s), which drops what is written meanwhile
    while time.monotonic() < end:
        stream.write(chunk)
        written += len(chunk)
        time.sleep(0.005)
    stream.close()
    assert sum(delivered) == written


def test_run_pipeline_turns_the_timed_flushes_off(monkeypatch):
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1000)
    runners.run_pipeline(lambda p: p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x), [], workers=1)
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 0
