"""The orchestration: what runs the study's runs (sweep, executors, preflight, report stage, the GPU kit).

It drives the research path (srlib.config, data, upscale, model, train, runs) and is never imported by it.
"""
