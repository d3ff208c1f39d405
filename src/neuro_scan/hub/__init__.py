"""Pre-computed reports through a Hugging Face Hub dataset: ``fetch`` and ``publish`` (docs/hub.md).

Import the submodules directly: ``layout`` (file layout, index, name matching; no network),
``remote`` (the only code that calls huggingface_hub), ``fetch`` and ``publish``. This file stays
empty so that the CLI can read ``layout.DEFAULT_REPO`` without importing huggingface_hub.
"""
