"""`neuro-scan serve`: a local web app to browse the reports under a results folder, start scans
and watch their results arrive (docs/serve.md).

- :mod:`.settings`: where it listens, its token, and paths confined to the results folder;
- :mod:`.catalog`: the reports under the results folder, and the commands' forms;
- :mod:`.jobs`: jobs, each in its own folder, run one at a time per device by worker processes;
- :mod:`.worker`: the child process that runs one job through the CLI's runner;
- :mod:`.app`: the HTTP routes and the server-sent event stream;
- ``static/``: the page (HTML, JavaScript and CSS; plotly.js comes from plotly.py).

No analysis runs in the server: a job is ``neuro_scan.runner.run`` in the worker, whose events
are appended to the job's ``events.jsonl``, which the server streams to the page.
"""
