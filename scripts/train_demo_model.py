#!/usr/bin/env python
"""Train neuro-scan's built-in demo model: a tiny character-level Llama.

The model learns two synthetic tasks, so that ``neuro-scan map --model demo`` has a real,
trained network to map without downloading anything:

* two-digit additions written ``23+45=68.`` (a, b in 10..99); a fixed, seeded 10% of the
  (a, b) pairs is held out and never seen in training;
* a made-up fact table ``mira is blue.`` (24 names, each with one of 8 colours).

Every training sequence is ``<bos>`` followed by the characters of the text; the loss is taken
on the answer characters only (what follows ``=`` or ``is``). Training is seeded and, by default,
single-threaded on the CPU, so it is reproducible::

    python scripts/train_demo_model.py            # writes src/neuro_scan/data/demo_model

The script is importable: ``train(steps, seed, ...)`` returns a :class:`TrainResult` (used by
tests/test_demo_model.py for a short run).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import string
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "neuro_scan" / "data" / "demo_model"
DEFAULT_PROBES = REPO_ROOT / "src" / "neuro_scan" / "data" / "probes"
ARITH_PROBE_SIZE = 32

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
PAD, BOS, EOS, UNK = SPECIAL_TOKENS
CHARS = list(string.digits) + list(string.ascii_lowercase) + [" ", "+", "=", ".", ",", "?", "!", "'", "-", ":"]

NAMES = [
    "mira", "tolan", "vesk", "brin", "kalo", "dunia", "fenn", "garo",
    "hesta", "ilvo", "jory", "lenka", "moro", "nadi", "osk", "pell",
    "quin", "rasa", "sulo", "tavi", "ulma", "varn", "wyn", "zeph",
]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]

HELDOUT_FRACTION = 0.10
FACT_FRACTION = 0.2  # share of fact sequences in a training batch


# ----------------------------------------------------------------------------- data

def all_pairs() -> list[tuple[int, int]]:
    return [(a, b) for a in range(10, 100) for b in range(10, 100)]


def split_pairs(seed: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(train pairs, held-out pairs): a seeded 10% of all (a, b) pairs is held out."""
    pairs = all_pairs()
    rng = random.Random(f"heldout-{seed}")
    heldout = set(rng.sample(pairs, round(HELDOUT_FRACTION * len(pairs))))
    return [p for p in pairs if p not in heldout], sorted(heldout)


def make_fact_table(seed: int) -> dict[str, str]:
    """Each colour gets len(NAMES) / len(COLOURS) names, assigned by a seeded shuffle."""
    rng = random.Random(f"facts-{seed}")
    colours = [COLOURS[i % len(COLOURS)] for i in range(len(NAMES))]
    rng.shuffle(colours)
    return dict(zip(NAMES, colours))


def addition_prompt(a: int, b: int) -> tuple[str, str]:
    return f"{a}+{b}=", f"{a + b}."


def fact_prompt(name: str, colour: str) -> tuple[str, str]:
    return f"{name} is", f" {colour}."


def is_carry(a: int, b: int) -> bool:
    """The units digits carry into the tens."""
    return a % 10 + b % 10 >= 10


# ----------------------------------------------------------------------------- tokenizer

def build_tokenizer():
    """A character-level tokenizer: one token per character, <bos> added automatically."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=64,
    )


def encode_example(tokenizer, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of <bos>+prompt+answer (exactly as the neuro-scan engine builds them) and
    the number of prompt tokens (including <bos>)."""
    p = tokenizer(prompt)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return p + a, len(p)


def encode_batch(tokenizer, examples: list[tuple[str, str]]):
    """(input_ids, attention_mask, answer_mask) right-padded tensors. answer_mask[i, t] is True
    where token t is an answer token (predicted from position t - 1)."""
    encoded = [encode_example(tokenizer, p, a) for p, a in examples]
    length = max(len(ids) for ids, _ in encoded)
    pad_id = tokenizer.pad_token_id
    ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    attn = torch.zeros((len(encoded), length), dtype=torch.long)
    ans = torch.zeros((len(encoded), length), dtype=torch.bool)
    for i, (seq, n_prompt) in enumerate(encoded):
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        ans[i, n_prompt: len(seq)] = True
    return ids, attn, ans


# ----------------------------------------------------------------------------- model

def build_model(vocab_size: int, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    return LlamaForCausalLM(config)


def answer_loss(logits: torch.Tensor, ids: torch.Tensor, ans: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over answer tokens (position t - 1 predicts token t)."""
    pred = logits[:, :-1].reshape(-1, logits.shape[-1])
    target = ids[:, 1:].reshape(-1)
    mask = ans[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(pred[mask], target[mask])


@torch.no_grad()
def teacher_forced_accuracy(model, tokenizer, examples: list[tuple[str, str]], batch_size: int = 512) -> float:
    """Share of examples whose every answer token is the argmax given the true prefix."""
    model.eval()
    correct = 0
    for start in range(0, len(examples), batch_size):
        ids, attn, ans = encode_batch(tokenizer, examples[start: start + batch_size])
        logits = model(input_ids=ids, attention_mask=attn).logits
        hit = logits[:, :-1].argmax(-1) == ids[:, 1:]
        ok = (hit | ~ans[:, 1:]).all(dim=1)
        correct += int(ok.sum())
    return correct / len(examples)


# ----------------------------------------------------------------------------- training

@dataclass
class TrainResult:
    model: object
    tokenizer: object
    losses: list[float]
    final_loss: float           # mean of the last (up to) 50 step losses
    heldout_accuracy: float     # teacher-forced, all held-out additions
    train_accuracy: float       # teacher-forced, a 1000-pair sample of the training additions
    fact_accuracy: float        # teacher-forced, all facts
    wall_time_s: float          # training loop only
    heldout_pairs: list[tuple[int, int]]
    fact_table: dict[str, str]
    seed: int
    steps: int
    threads: int
    n_params: int
    config: dict = field(default_factory=dict)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(steps: int = 3000, seed: int = 0, threads: int = 1, lr: float = 3e-3, batch_size: int = 64,
          warmup: int | None = None, weight_decay: float = 0.01, log_every: int = 0) -> TrainResult:
    if warmup is None:
        warmup = min(200, max(1, steps // 10))
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)

    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), tokenizer)
    n_params = sum(p.numel() for p in model.parameters())

    train_pairs, heldout_pairs = split_pairs(seed)
    facts = make_fact_table(seed)
    fact_examples = [fact_prompt(n, c) for n, c in facts.items()]
    train_examples = [addition_prompt(a, b) for a, b in train_pairs]

    # pre-encode everything once: one padded tensor per task
    add_ids, add_attn, add_ans = encode_batch(tokenizer, train_examples)
    fact_ids, fact_attn, fact_ans = encode_batch(tokenizer, fact_examples)
    length = max(add_ids.shape[1], fact_ids.shape[1])

    def pad_to(t, value):
        return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value)

    all_ids = torch.cat([pad_to(add_ids, tokenizer.pad_token_id), pad_to(fact_ids, tokenizer.pad_token_id)])
    all_attn = torch.cat([pad_to(add_attn, 0), pad_to(fact_attn, 0)])
    all_ans = torch.cat([pad_to(add_ans, False), pad_to(fact_ans, False)])
    n_add, n_fact = len(train_examples), len(fact_examples)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))

    losses: list[float] = []
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        rows = [n_add + rng.randrange(n_fact) if rng.random() < FACT_FRACTION else rng.randrange(n_add)
                for _ in range(batch_size)]
        idx = torch.tensor(rows)
        ids, attn, ans = all_ids[idx], all_attn[idx], all_ans[idx]
        used = int(attn.sum(1).max())
        ids, attn, ans = ids[:, :used], attn[:, :used], ans[:, :used]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        logits = model(input_ids=ids, attention_mask=attn).logits
        loss = answer_loss(logits, ids, ans)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            heldout = teacher_forced_accuracy(model, tokenizer, [addition_prompt(a, b) for a, b in heldout_pairs])
            model.train()
            print(f"step {step + 1:6d}  loss {sum(losses[-log_every:]) / log_every:.4f}  "
                  f"held-out add acc {heldout:.3f}  {time.perf_counter() - t0:7.1f}s", flush=True)
    wall = time.perf_counter() - t0
    model.eval()

    heldout_acc = teacher_forced_accuracy(model, tokenizer, [addition_prompt(a, b) for a, b in heldout_pairs])
    sample = random.Random(f"train-eval-{seed}").sample(train_pairs, min(1000, len(train_pairs)))
    train_acc = teacher_forced_accuracy(model, tokenizer, [addition_prompt(a, b) for a, b in sample])
    fact_acc = teacher_forced_accuracy(model, tokenizer, fact_examples)
    tail = losses[-50:]
    return TrainResult(
        model=model, tokenizer=tokenizer, losses=losses, final_loss=sum(tail) / len(tail),
        heldout_accuracy=heldout_acc, train_accuracy=train_acc, fact_accuracy=fact_acc,
        wall_time_s=wall, heldout_pairs=heldout_pairs, fact_table=facts, seed=seed, steps=steps,
        threads=threads, n_params=n_params,
        config={"lr": lr, "batch_size": batch_size, "warmup": warmup, "weight_decay": weight_decay,
                "schedule": "linear warmup, cosine decay to 2% of lr", "fact_fraction": FACT_FRACTION,
                "loss": "cross-entropy on answer tokens only"},
    )


def save(result: TrainResult, out: Path, command: str = "") -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = result.model.to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)  # not needed: no generation defaults
    result.tokenizer.save_pretrained(out)
    record = {
        "seed": result.seed,
        "steps": result.steps,
        "wall_time_s": round(result.wall_time_s, 1),
        "threads": result.threads,
        "torch_version": torch.__version__,
        "transformers_version": __import__("transformers").__version__,
        "command": command,
        "n_params": result.n_params,
        "hyperparameters": result.config,
        "final_train_loss": result.final_loss,
        "final_train_loss_note": "mean answer-token cross-entropy over the last 50 steps",
        "heldout_addition_accuracy": result.heldout_accuracy,
        "train_addition_accuracy_sample": result.train_accuracy,
        "fact_accuracy": result.fact_accuracy,
        "accuracy_note": "teacher-forced: a sample is correct when every answer token is the argmax",
        "heldout_pairs": [list(p) for p in result.heldout_pairs],
        "fact_table": result.fact_table,
        "loss_curve_every_100_steps": [
            round(sum(result.losses[i:i + 100]) / len(result.losses[i:i + 100]), 4)
            for i in range(0, len(result.losses), 100)
        ],
    }
    (out / "training_record.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def build_probes(heldout_pairs: list[tuple[int, int]], fact_table: dict[str, str], seed: int) -> tuple[dict, dict]:
    """The demo probes: ``arith`` (32 held-out additions, half with a carry from the units) and
    ``facts`` (one multiple-choice sample per name, the choices being every colour)."""
    rng = random.Random(f"probe-{seed}")
    carry = [p for p in heldout_pairs if is_carry(*p)]
    no_carry = [p for p in heldout_pairs if not is_carry(*p)]
    half = ARITH_PROBE_SIZE // 2
    chosen = rng.sample(carry, half) + rng.sample(no_carry, ARITH_PROBE_SIZE - half)
    rng.shuffle(chosen)
    arith = {
        "name": "arith",
        "description": "Two-digit additions (a+b= -> sum.) that the demo model never saw in training "
                       "(held-out pairs); 'carry' when the units digits carry into the tens.",
        "group": "demo",
        "samples": [
            {"prompt": addition_prompt(a, b)[0], "answer": addition_prompt(a, b)[1],
             "category": "carry" if is_carry(a, b) else "no_carry"}
            for a, b in chosen
        ],
    }
    choices = [fact_prompt("", c)[1] for c in COLOURS]
    facts = {
        "name": "facts",
        "description": "Recall of the demo model's made-up fact table ('mira is' -> ' blue.'): "
                       "multiple choice over all colours.",
        "group": "demo",
        "samples": [
            {"prompt": fact_prompt(n, c)[0], "answer": fact_prompt(n, c)[1], "choices": choices,
             "category": "fact"}
            for n, c in fact_table.items()
        ],
    }
    return arith, facts


def write_probes(result: TrainResult, probes_dir: Path) -> None:
    probes_dir = Path(probes_dir)
    probes_dir.mkdir(parents=True, exist_ok=True)
    for probe in build_probes(result.heldout_pairs, result.fact_table, result.seed):
        path = probes_dir / f"{probe['name']}.json"
        path.write_text(json.dumps(probe, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--probes-dir", type=Path, default=None,
                    help="where to write arith.json and facts.json (default: the package's probe folder "
                         "when --out is the default, else DIR/probes)")
    ap.add_argument("--log-every", type=int, default=500)
    args = ap.parse_args(argv)
    result = train(steps=args.steps, seed=args.seed, threads=args.threads, lr=args.lr, log_every=args.log_every)
    command = (f"python scripts/train_demo_model.py --steps {args.steps} --seed {args.seed} "
               f"--threads {args.threads} --lr {args.lr}")
    save(result, args.out, command)
    probes_dir = args.probes_dir or (DEFAULT_PROBES if args.out.resolve() == DEFAULT_OUT else args.out / "probes")
    write_probes(result, probes_dir)
    print(f"params {result.n_params}  wall {result.wall_time_s:.1f}s  final loss {result.final_loss:.4f}  "
          f"held-out add acc {result.heldout_accuracy:.4f}  fact acc {result.fact_accuracy:.4f}  -> {args.out}")


if __name__ == "__main__":
    main()
