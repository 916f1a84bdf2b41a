"""The browser UI: `python -m glance_lite.ui [--port N]` serves a Gradio page on localhost (`pip install -e ".[ui]"`).

Glue over the public API, one responsibility per module:

    library.py   the calls whose home is moving (planner, profile choice) and the page's error texts
    request.py   the Generate fields -> checked load/generate arguments
    worker.py    the ONE thread that does model work, its queue, the jobs' progress and cancellation
    models.py    the loaded models (one Glance per model, profile, LoRA files and compat), reused across requests
    jobs.py      what Generate and Compare do on the worker: generate, PNGs with their settings, PSNR, grid
    training.py  a training run in a child process: live loss, stop, resume, the trained runs on disk
    views.py     what the page shows: plan table, progress bars, stage tables, loaded models
    app.py       the Gradio Blocks: tabs, fields and the handlers that connect them
    __main__.py  the command line
    browser.py   the server on a free port and a headless Chromium driving it (tests, docs/make_screenshots.py)

Only this package imports gradio; the core package never needs it.
"""
