"""Input that used to be lost silently or to crash late (issue 11): every case is refused (or warned
about) with one line, before any forward pass or before the model is loaded, and nothing is written.

- lengths: a sample longer than the model's positions (the demo model's 64, rotary; a GPT-2 with
  64 learned positions, which crashed with IndexError); prompt-repeat's longer prompts; calibrate's
  corpus rows, now cut to the model's positions;
- characters the tokenizer does not know: refused in answers and choices, a warning for prompts;
- ``--seed`` out of range, for every command;
- truncated or corrupt weight files, a folder with a config only, a lens folder, an empty --model;
- JSON nested too deeply to read; publish refusing what compare refuses;
- a Hub that does not answer: one request, then the error (or the cached copy), never the retries.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from test_cli_errors import (HUB_ID, assert_nothing_written, assert_usage_error, run_inprocess, run_subprocess,
                             write_json)

DEMO_POSITIONS = 64  # the demo model's max_position_embeddings


def save_tiny(folder: Path, model_type: str = "llama", **config) -> Path:
    """A tiny random model (tests/tiny_models.py) with config changes, saved with the char tokenizer."""
    import torch
    from tiny_models import CONFIGS, tiny_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**CONFIGS[model_type], **config}))
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_64(tmp_path_factory) -> Path:
    """GPT-2 with 64 learned positions: a longer row indexes past its position table."""
    return save_tiny(tmp_path_factory.mktemp("gpt2_64"), "gpt2", n_positions=64)


@pytest.fixture
def forwards(monkeypatch) -> list[int]:
    """Counts the forward passes of in-process runs (the real forward still runs)."""
    from neuro_scan.backend.transformers import TransformersBackend

    calls: list[int] = []
    original = TransformersBackend.run

    def counted(self, batch, **kwargs):
        calls.append(batch.size)
        return original(self, batch, **kwargs)

    monkeypatch.setattr(TransformersBackend, "run", counted)
    return calls


def demo_tokens(text: str, prompt: bool) -> int:
    """Token count straight from the demo model's tokenizer (not through neuro-scan)."""
    from transformers import AutoTokenizer

    from neuro_scan.backend.loading import demo_model_dir

    return len(AutoTokenizer.from_pretrained(demo_model_dir())(text, add_special_tokens=prompt)["input_ids"])


# ------------------------------------------------------------------------------------------ lengths


@pytest.mark.parametrize("command", ["ablate", "map", "logit-lens", "attention", "circuit"])
def test_sample_longer_than_the_demo_model_reads(command, tmp_path, forwards):
    prompt, answer = "12+34=", " " + "1" * 200
    probe = write_json(tmp_path / "long.json", {"name": "long", "samples": [{"prompt": "1+1=", "answer": "2."},
                                                                            {"prompt": prompt, "answer": answer}]})
    total = demo_tokens(prompt, True) + demo_tokens(answer, False)
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess([command, "--model", "demo", "--custom-probe", str(probe), "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, [f"probe file {probe}", f"sample 1 is {total} tokens",
                                            f"at most {DEMO_POSITIONS} positions"], out)
    assert forwards == []


def test_learned_positions_model_refuses_instead_of_crashing(gpt2_64, tmp_path, forwards):
    probe = write_json(tmp_path / "long.json", {"name": "long", "samples": [{"prompt": "Q: " + "x" * 80, "answer": " y"}]})
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["ablate", "--model", str(gpt2_64), "--custom-probe", str(probe), "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, ["sample 0 is 85 tokens", "at most 64 positions"], out)
    assert forwards == []


@pytest.mark.parametrize("answer_tokens", [1, 3])
def test_the_longest_sample_that_fits_runs_on_learned_positions(answer_tokens, gpt2_64, tmp_path):
    """The limit is exact: the model reads prompt + answer less its last token, so 65 tokens fit 64
    positions (GPT-2's position table would raise IndexError one further) and 66 do not."""
    from neuro_scan.backend import open_backend
    from neuro_scan.engine import Engine
    from neuro_scan.errors import UsageError
    from neuro_scan.probes import Probe, Sample

    backend = open_backend(str(gpt2_64), device="cpu")  # the char tokenizer adds no special tokens
    answer = " " + "y" * (answer_tokens - 1)

    def probe(total: int) -> Probe:
        return Probe("edge", "", (Sample("x" * (total - answer_tokens), answer),))

    engine = Engine(backend, probe(65))
    assert max(map(len, engine.plan.sequences)) == 64 and len(engine.baseline.answer_logprob) == 1
    with pytest.raises(UsageError, match="sample 0 is 66 tokens"):
        Engine(backend, probe(66))


def test_prompt_repeat_checks_the_repeated_prompts_before_running(tmp_path, forwards):
    from neuro_scan.analysis.prompt_repeat import SEPARATOR
    from neuro_scan.probes import load_builtin

    first = load_builtin("arith").samples[0]
    total = demo_tokens(SEPARATOR.join([first.prompt] * 12), True) + demo_tokens(first.answer, False)
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["prompt-repeat", "--model", "demo", "--probe", "arith", "--max-samples", "3",
                                        "--repeat-counts", "1,2,12", "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, ["built-in probe arith", "sample 0 with its prompt repeated 12 times",
                                            "--repeat-counts", f"is {total} tokens", f"at most {DEMO_POSITIONS} positions"],
                       out)
    assert forwards == []


def test_cross_probe_checks_every_probe_before_the_first_runs(tmp_path, forwards):
    long = write_json(tmp_path / "long.json", {"name": "long", "samples": [{"prompt": "1" * 70, "answer": "2."}]})
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["cross-probe", "--model", "demo", "--probes", f"arith,{long}", "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, [f"probe file {long}", "sample 0 is 73 tokens"], out)
    assert forwards == []


def test_calibrate_cuts_corpus_rows_to_the_model_positions(gpt2_64):
    """Rows were 256 tokens whatever the model: IndexError on 64 learned positions."""
    from neuro_scan.analysis.tuned_lens import TrainSettings, calibrate, split_corpus
    from neuro_scan.backend import open_backend
    from neuro_scan.corpus import builtin_corpus

    backend = open_backend(str(gpt2_64), device="cpu")
    settings = TrainSettings(steps=2, tokens_per_step=1024, heldout_tokens=256)
    assert settings.context_tokens == 256
    fitted = TrainSettings(**{**settings.__dict__, "max_positions": backend.max_positions})
    rows = split_corpus(builtin_corpus(), backend, fitted)
    assert max(len(r) for r in rows.train + rows.heldout) == 64
    calibration = calibrate(backend, builtin_corpus(), settings)
    assert calibration.record.settings["context_tokens"] == 64
    assert calibration.record.training["tokens_seen"] == 2 * 1024  # the step size is kept: more, shorter rows
    assert calibration.record.heldout.tokens == 256


def test_calibrate_refuses_a_one_layer_model(tmp_path):
    folder = save_tiny(tmp_path / "one_layer", num_hidden_layers=1)
    lens = tmp_path / "lens" / "lens.safetensors"
    rc, stdout, stderr = run_inprocess(["calibrate", "--model", str(folder), "--steps", "2", "-o", str(lens)])
    assert_usage_error(rc, stdout, stderr, ["--model", "one layer", "tuned lens"], lens.parent)


def test_context_limit_reads_every_config_spelling():
    """max_position_embeddings, GPT-2's n_positions, a multimodal model's text config."""
    from transformers import AutoConfig

    from neuro_scan.backend.loading import context_limit

    assert context_limit(AutoConfig.for_model("llama", max_position_embeddings=96)) == 96
    assert context_limit(AutoConfig.for_model("gpt2", n_positions=48)) == 48
    gemma3 = AutoConfig.for_model("gemma3", text_config={"max_position_embeddings": 80})
    assert context_limit(gemma3) == 80


# ------------------------------------------------------------------------------ unknown characters


def demo_unknown(text: str) -> list[str]:
    """Characters the demo tokenizer maps to its unknown token, one by one (not through neuro-scan)."""
    from transformers import AutoTokenizer

    from neuro_scan.backend.loading import demo_model_dir

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir())
    return [c for c in dict.fromkeys(text) if tokenizer(c, add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]]


@pytest.mark.parametrize(("sample", "fragments"), [
    ({"prompt": "12+34=", "answer": "46.é"}, ["sample 1", "the answer '46.é'", "'é'"]),
    ({"prompt": "12+34=", "answer": "46.\n"}, ["sample 1", "'\\n'"]),
    ({"prompt": "mira is", "answer": " red.", "choices": [" red.", " 🙂."]}, ["sample 1", "the choice ' 🙂.'", "'🙂'"]),
])
def test_answers_with_unknown_characters_are_refused(sample, fragments, tmp_path, forwards):
    probe = write_json(tmp_path / "unk.json", {"name": "unk", "samples": [{"prompt": "1+1=", "answer": "2."}, sample]})
    answer_text = "".join(sample.get("choices", [sample["answer"]]))
    assert demo_unknown(answer_text), "the case must hold a character the demo tokenizer does not know"
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["ablate", "--model", "demo", "--custom-probe", str(probe), "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, [f"probe file {probe}", "does not know", *fragments], out)
    assert forwards == []


@pytest.mark.slow
def test_prompts_with_unknown_characters_are_warned_about(tmp_path):
    """A real process: the warning line on stderr names the samples and characters; the run completes."""
    prompts = ["1+1=", "2+2=\n", "3+3=é😀", "4+4="]
    probe = write_json(tmp_path / "unk_prompts.json",
                       {"name": "unk_prompts", "samples": [{"prompt": p, "answer": "2."} for p in prompts]})
    unknown = demo_unknown("".join(prompts))
    assert unknown == ["\n", "é", "😀"]
    out = tmp_path / "out"
    rc, stdout, stderr = run_subprocess(["ablate", "--model", "demo", "--custom-probe", str(probe), "-o", str(out)],
                                        tmp_path)
    assert rc == 0, stderr
    warnings = [line for line in stderr.splitlines() if "does not know" in line]
    assert len(warnings) == 1, stderr
    assert f"probe file {probe}: the prompts of samples 1, 2 hold characters" in warnings[0]
    assert "('\\n', 'é', '😀')" in warnings[0]
    assert json.loads((out / "ablation.json").read_text())["sample_count"] == 4


def test_a_tokenizer_without_an_unknown_token_is_never_flagged(gpt2_64):
    """Only characters that really become the unknown token count (offsets of the fast tokenizer)."""
    from neuro_scan.backend import open_backend

    backend = open_backend(str(gpt2_64), device="cpu")
    assert backend.unknown_pieces("a\nbé c😀") == ["\n", "é", "😀"]
    assert backend.unknown_pieces("plain ascii text") == []
    backend.tokenizer.unk_token = None
    assert backend.unknown_pieces("a\nbé") == []


# ------------------------------------------------------------------------------------------ --seed

SEED_COMMANDS = {
    "map": [], "ablate": [], "attention": [], "logit-lens": [], "circuit": [], "prompt-repeat": [],
    "cross-probe": ["--probes", "arith,facts"], "calibrate": [],
}


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(10**30)])
@pytest.mark.parametrize("command", sorted(SEED_COMMANDS))
def test_seed_out_of_range_is_refused_before_loading(command, seed, tmp_path, no_model_loading):
    out = tmp_path / "out"
    target = ["-o", str(out / "lens.safetensors")] if command == "calibrate" else ["-o", str(out)]
    rc, stdout, stderr = run_inprocess([command, "--model", HUB_ID, *SEED_COMMANDS[command], f"--seed={seed}", *target])
    assert_usage_error(rc, stdout, stderr, [f"--seed: must be a whole number from 0 to 4294967295, got {seed}"], out)


def test_the_largest_seed_runs_a_whole_scan(tiny_model_folder, tmp_path):
    """numpy's bootstrap and torch both take the top of the range (the bootstrap runs after the scan)."""
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["ablate", "--model", str(tiny_model_folder), "--max-samples", "2",
                                        "--seed", str(2**32 - 1), "-o", str(out)])
    assert rc == 0, stderr
    assert json.loads((out / "ablation.json").read_text())["seed"] == 2**32 - 1


# ----------------------------------------------------------------------------------- model files


def copy_model(source: Path, folder: Path) -> Path:
    shutil.copytree(source, folder)
    return folder


@pytest.mark.parametrize("damage", ["truncated", "random_bytes"])
def test_corrupt_safetensors_is_named(damage, tiny_model_folder, tmp_path):
    folder = copy_model(tiny_model_folder, tmp_path / "model")
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2] if damage == "truncated" else os.urandom(size))
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["ablate", "--model", str(folder), "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, ["--model", str(weights), "not a readable safetensors file",
                                            "truncated or corrupt"], out)


def write_tiny_gguf(path: Path) -> bytes:
    """A small, well-formed GGUF file (metadata and one tensor; its config is not a loadable model)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(4)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "c"])
    writer.add_tensor("token_embd.weight", np.arange(32, dtype=np.float32).reshape(8, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.mark.parametrize("keep", [16, 100, 0.5, -1])
def test_truncated_gguf_is_named(keep, tmp_path):
    data = write_tiny_gguf(tmp_path / "whole.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["ablate", "--model", str(cut), "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, ["--model", str(cut), "not a readable GGUF file", "truncated or corrupt"], out)


def test_an_intact_gguf_is_not_called_corrupt(tmp_path):
    """Positive control: the whole file reads; its error is about its (deliberately unusable) config."""
    whole = tmp_path / "whole.gguf"
    write_tiny_gguf(whole)
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["ablate", "--model", str(whole), "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, ["--model", str(whole), "config is not valid", "hidden size"], out,
                       forbidden=["not a readable"])


def test_folder_with_a_config_only(tiny_model_folder, tmp_path, no_model_loading):
    folder = tmp_path / "config_only"
    folder.mkdir()
    shutil.copy(tiny_model_folder / "config.json", folder)
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["map", "--model", str(folder), "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, ["--model", str(folder), "no weights", "model.safetensors",
                                            "pytorch_model.bin"], out)


def test_folder_without_a_tokenizer_gives_the_whole_reason(tiny_model_folder, tmp_path):
    folder = tmp_path / "no_tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_folder / name, folder)
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["ablate", "--model", str(folder), "-o", str(out)])
    line = assert_usage_error(rc, stdout, stderr, ["--model", "the tokenizer of", str(folder)], out)
    assert not line.rstrip().endswith("from one of:"), line


def test_tuned_lens_folder(tiny_model_folder, tmp_path, no_model_loading):
    folder = tmp_path / "lenses"
    folder.mkdir()
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["map", "--model", str(tiny_model_folder), "--tuned-lens", str(folder), "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, ["--tuned-lens", str(folder), "is a folder, not a lens file"], out,
                       forbidden=["no such file"])


@pytest.mark.parametrize("command", ["map", "calibrate"])
def test_empty_model_name(command, tmp_path, no_model_loading):
    out = tmp_path / "out"
    target = str(out / "lens.safetensors") if command == "calibrate" else str(out)
    rc, stdout, stderr = run_inprocess([command, "--model", "", "-o", target])
    assert_usage_error(rc, stdout, stderr, ["--model: must not be empty"], out)


@pytest.mark.parametrize("args", [["fetch", "--model", ""], ["fetch", "--list", "--model", " "],
                                  ["publish", "report.json", "--model", ""]], ids=["fetch", "fetch_list", "publish"])
def test_empty_hub_model_name(args, tmp_path, monkeypatch):
    """Refused before the Hub is asked or the report read (there is no report.json here)."""
    monkeypatch.chdir(tmp_path)
    rc, stdout, stderr = run_inprocess([*args, "--repo", "acme/reports"])
    assert_usage_error(rc, stdout, stderr, ["--model: must not be empty"], None)


# -------------------------------------------------------------------------------- nested JSON

DEEP = "[" * 100_000 + "]" * 100_000


def test_deeply_nested_probe_file(tmp_path, no_model_loading):
    probe = tmp_path / "deep.json"
    probe.write_text('{"name": "p", "samples": ' + DEEP + "}")
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["ablate", "--model", HUB_ID, "--custom-probe", str(probe), "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, [f"probe file {probe}", "nested too deeply"], out)


def reference_report(layers: int, rows: list[dict]) -> dict:
    return {"model": "acme/ref", "probe": "math", "total_layers": layers, "ablation_results": rows, "layer_labels": {}}


GOOD_ROWS = [{"layer_idx": i, "score_delta": 0.1 * (i + 1)} for i in range(3)]


def test_deeply_nested_report_in_compare_and_publish(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    good = write_json(tmp_path / "good.json", reference_report(3, GOOD_ROWS))
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["compare", str(good), str(deep), "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, [str(deep), "nested too deeply"], out)
    rc, stdout, stderr = run_inprocess(["publish", str(deep), "--repo", "acme/reports"])
    assert_usage_error(rc, stdout, stderr, [f"report file {deep}", "nested too deeply"], None)


def test_deeply_nested_index_and_corpus(tmp_path):
    from neuro_scan.corpus import load_corpus_file
    from neuro_scan.errors import UsageError
    from neuro_scan.hub.layout import HubIndex

    with pytest.raises(UsageError, match="index.json of dataset a/b is not a neuro-scan report index .*nested too deeply"):
        HubIndex.parse(DEEP, "index.json of dataset a/b")
    corpus = tmp_path / "deep.jsonl"
    corpus.write_text('{"text": "fine"}\n' + DEEP + "\n")
    with pytest.raises(UsageError, match="line 2 is JSON nested too deeply"):
        load_corpus_file(corpus)


@pytest.mark.parametrize("rows", [
    [GOOD_ROWS[0], GOOD_ROWS[2]],  # a layer without a row: the reference format allows it, compare cannot use it
    [GOOD_ROWS[0], {"layer_idx": 1, "score_delta": float("nan")}, GOOD_ROWS[2]],
], ids=["missing_layer", "nan_delta"])
def test_publish_refuses_what_compare_refuses_with_the_same_message(rows, tmp_path):
    report = write_json(tmp_path / "report.json", reference_report(3, rows))
    good = write_json(tmp_path / "good.json", reference_report(3, GOOD_ROWS))
    rc, stdout, stderr = run_inprocess(["compare", str(good), str(report), "-o", str(tmp_path / "out")])
    compare_line = assert_usage_error(rc, stdout, stderr, [str(report), "not a neuro-scan report"], tmp_path / "out")
    rc, stdout, stderr = run_inprocess(["publish", str(report), "--repo", "acme/reports"])
    assert assert_usage_error(rc, stdout, stderr, [], None) == compare_line


# ----------------------------------------------------------------------------- unreachable Hub


class RecordingServer:
    """Accepts connections on 127.0.0.1, records each request line and hangs up without answering:
    a Hub that cannot be reached (huggingface_hub retries such a Hub with back-off)."""

    def __init__(self):
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.requests: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5)
                try:
                    self.requests.append(connection.recv(4096).split(b"\r\n")[0].decode())
                except OSError:
                    self.requests.append("?")

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def dead_hub():
    server = RecordingServer()
    yield server
    server.close()


def run_against(hub: RecordingServer, args: list[str], home: Path, **extra: str) -> subprocess.CompletedProcess:
    from test_cli_errors import cli_command

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "NEURO_SCAN_"))}
    env.update(HF_HOME=str(home), HF_ENDPOINT=hub.url, NO_COLOR="1", COLUMNS="300", **extra)
    return subprocess.run([*cli_command(), *args], capture_output=True, text=True, env=env, cwd=home, timeout=300)


@pytest.mark.slow
def test_unreachable_hub_model_fails_after_one_request(dead_hub, tmp_path):
    """Before: every file was asked for six times with back-off (about 50 s); now the Hub is asked once."""
    out = tmp_path / "out"
    run = run_against(dead_hub, ["ablate", "--model", "acme/some-model", "-o", str(out)], tmp_path)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 2, run.stderr
    assert f"contacting {dead_hub.url} for acme/some-model (set HF_HUB_OFFLINE=1" in lines[0]
    assert lines[1].startswith(f"error: --model: cannot reach the Hugging Face Hub at {dead_hub.url}")
    assert "'acme/some-model' is not in the local cache" in lines[1]
    assert [r for r in dead_hub.requests if "some-model" in r] == []
    assert dead_hub.requests.count("HEAD / HTTP/1.1") == 1
    assert_nothing_written(out)


@pytest.mark.slow
def test_unreachable_hub_loads_a_cached_model(dead_hub, tiny_model_folder, tmp_path):
    """Nothing lost: a model in the Hugging Face cache still loads when the Hub does not answer."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    cached = tmp_path / "hub" / "models--acme--tiny"
    shutil.copytree(tiny_model_folder, cached / "snapshots" / commit)
    (cached / "refs").mkdir()
    (cached / "refs" / "main").write_text(commit)
    out = tmp_path / "out"
    run = run_against(dead_hub, ["ablate", "--model", "acme/tiny", "--max-samples", "2", "-o", str(out)], tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads((out / "ablation.json").read_text())["model"] == "acme/tiny"
    assert [r for r in dead_hub.requests if "acme/tiny" in r] == []


@pytest.mark.slow
def test_offline_mode_asks_nothing_and_says_nothing_about_contacting(dead_hub, tmp_path):
    run = run_against(dead_hub, ["ablate", "--model", "acme/some-model", "-o", str(tmp_path / "out")], tmp_path,
                      HF_HUB_OFFLINE="1")
    assert_usage_error(run.returncode, run.stdout, run.stderr, ["--model", "acme/some-model", "HF_HUB_OFFLINE is set"],
                       tmp_path / "out", forbidden=["contacting"])
    assert dead_hub.requests == []


@pytest.mark.slow
def test_unreachable_hub_fetch_fails_after_one_request(dead_hub, tmp_path):
    run = run_against(dead_hub, ["fetch", "--model", "acme/some-model", "--repo", "acme/reports"], tmp_path)
    assert_usage_error(run.returncode, run.stdout, run.stderr,
                       ["cannot reach the Hugging Face Hub", dead_hub.url, "not in the local cache"], None)
    assert [r for r in dead_hub.requests if "acme/reports" in r] == []
    assert dead_hub.requests.count("HEAD / HTTP/1.1") == 1
