"""Batch denoising of audio files with a trained model directory, and evaluation against baselines.

    enhance         Enhancer (any length, batched across files)
    overlap_add     the overlap-add algorithm: window geometry, crossfade, streamed analysis and synthesis
    workers         the threads around the model (prefetching, file read-ahead)
    folders         enhance_files: a folder of files through an Enhancer, in threads or file processes
    file_stream     one file read into frames and written from them, a block at a time
    output_folder   inputs, output paths, skipping, the write check, failures.jsonl
    file_processes  the file side in worker processes (file_worker: one worker)
    beam_predict    predict --runner (predict_stages: its stages; job_manifest: the files to do)
    audio_io        finding, reading, resampling and atomically writing wav/flac/ogg
    evaluation      `speech-enhance evaluate`: scoring models against baselines, SNMF and peers
    cli             `speech-enhance predict` (and the registration of `evaluate`)

docs/predict.md and docs/evaluation.md describe both commands.
"""
