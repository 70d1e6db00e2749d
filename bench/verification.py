"""Verification thresholds, measured: honest engines vs cheaper models, on the trusted scorer.

    .venv/bin/python -m bench.verification [--jobs 32] [--max-tokens 48] [--out FILE.json]
    .venv/bin/python -m bench.verification --from FILE.json      # re-analyse saved runs

Without the network. For each source, generates completions for the jobs (the prompts
of `troop_verifier.jobs`, half greedy, half sampled at temperature 0.8, top-p 0.95),
recording each token with the log-probability its engine gave it (log_softmax of the raw
logits, float32), exactly what a worker's output evidence carries:

  honest-bf16   the shipped GGUF in transformers, bfloat16 (the worker's default), one
                row with a KV cache and the worker's own sampler (`batching.pick`);
  honest-fp32   the same in float32;
  llama.cpp     llama.cpp's OpenAI-compatible server on the same GGUF (`logprobs: true`),
                as `--engine openai` relays it;
  truncated     the same model with only its first 15 of 30 blocks (bf16);
  perturbed-3b  Gaussian noise on every block weight, twice Q4_1's rounding error in all
                (what a 3-bit quantization carries; tests/verification/cheat_models.py);
  perturbed-2b  the same at five times Q4_1's error (a 2-bit quantization's);
  perturbed-half  noise of half Q4_1's error (1.12 times Q4_1's error in all: about
                another rounding of the same 4-bit weights; where detection ends).

Then scores every token with the verifier's `TorchScorer` (float32, one teacher-forced
pass) and prints, per source and temperature: per-position |node - trusted| deviation
quantiles and max, the tolerance-normalised deviation (deviation / (abs + rel*|lp|)),
the trusted rank and logprob floor of the tokens, the per-job mean deviation, and what
`troop_verifier.judging.judge` decides with its default thresholds (jobs failed; for a
cheater, checks needed to catch it at 99%). Also the compute of one check (scorer pass
vs the node's generation) and the fraction of a node's capacity the default rate uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.llama_cpp import LlamaServer, llama_python
from troop_common.evidence import TokenEvidence
from troop_common.model_files import default_model_path
from troop_verifier.jobs import PROMPTS, VerificationJob
from troop_verifier.judging import Thresholds, judge
from troop_verifier.scoring import PositionScore, TorchScorer, token_bytes

SAMPLED = (0.8, 0.95)  # temperature, top_p of the sampled jobs


@dataclass
class Run:
    source: str
    job: int
    temperature: float
    prompt: str
    tokens: list[tuple[str, float, int | None]]  # hex bytes, logprob, id
    seconds: float


def jobs(count: int, max_tokens: int) -> list[VerificationJob]:
    out = []
    for n in range(count):
        greedy = n % 2 == 0
        out.append(VerificationJob(
            messages=(("user", PROMPTS[(n // 2) % len(PROMPTS)] if count <= 2 * len(PROMPTS)
                       else PROMPTS[n % len(PROMPTS)]),),
            max_tokens=max_tokens,
            temperature=0.0 if greedy else SAMPLED[0],
            top_p=1.0 if greedy else SAMPLED[1],
            seed=None if greedy else 1000 + n,
        ))  # fmt: skip
    return out


def generate_torch(
    path: Path, dtype: str, work: Sequence[VerificationJob], source: str
) -> list[Run]:
    """The built-in engine's way: the GGUF in transformers at `dtype`, the jobs decoded
    together in batches (left-padded rows with a KV cache, as the worker batches), each
    token with log_softmax(logits.float()) of its raw logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    options = {"gguf_file": path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **options)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, dtype=getattr(torch, dtype), **options
    ).eval()
    eos = {tokenizer.eos_token_id, *_ids(model.generation_config.eos_token_id)}
    vocab = token_bytes(tokenizer)
    runs: list[Run] = []
    groups: dict[tuple[float, float, int], list[int]] = {}
    for n, job in enumerate(work):
        groups.setdefault((job.temperature, job.top_p, job.max_tokens), []).append(n)
    for (temperature, top_p, max_tokens), members in groups.items():
        started = time.perf_counter()
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": r, "content": c} for r, c in work[n].messages],
                add_generation_prompt=True, tokenize=False,
            )
            for n in members
        ]  # fmt: skip
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(work[members[0]].seed or 0)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        with torch.inference_mode():
            out = model.generate(
                **batch, max_new_tokens=max_tokens, return_dict_in_generate=True,
                output_logits=True, pad_token_id=tokenizer.pad_token_id or 2,
                **(sampling if temperature > 0 else {"do_sample": False}),
            )  # fmt: skip
        seconds = (time.perf_counter() - started) / len(members)
        new = out.sequences[:, batch["input_ids"].shape[1] :]
        logprobs = [torch.log_softmax(step.float(), dim=-1) for step in out.logits]
        for row, n in enumerate(members):
            tokens: list[tuple[str, float, int | None]] = []
            for step in range(new.shape[1]):
                token = int(new[row, step])
                data = b"" if token in eos else vocab[token]
                tokens.append((data.hex(), float(logprobs[step][row, token]), token))
                if token in eos:
                    break
            runs.append(Run(source, n, temperature, work[n].messages[-1][1], tokens, seconds))
    return sorted(runs, key=lambda run: run.job)


def _ids(value: Any) -> list[int]:
    return value if isinstance(value, list) else [value] if value is not None else []


async def generate_llama(path: Path, work: Sequence[VerificationJob], source: str) -> list[Run]:
    """llama.cpp's server on `path`, asked like the relay asks (logprobs, no token ids)."""
    import httpx2 as httpx

    python = llama_python()
    if python is None:
        raise SystemExit("no llama.cpp server: run scripts/llama-server-env first")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        async with LlamaServer(python, path, log_path=Path(tmp) / "llama.log") as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
                for n, job in enumerate(work):
                    started = time.perf_counter()
                    body: dict[str, Any] = {
                        "model": server.alias,
                        "messages": [{"role": r, "content": c} for r, c in job.messages],
                        "max_tokens": job.max_tokens, "temperature": job.temperature,
                        "top_p": job.top_p, "logprobs": True, "top_logprobs": 0,
                    }  # fmt: skip
                    if job.seed is not None:
                        body["seed"] = job.seed
                    reply = (await http.post("/chat/completions", json=body)).json()
                    content = reply["choices"][0]["logprobs"]["content"]
                    tokens = []
                    for entry in content:
                        raw = entry.get("bytes")
                        data = bytes(raw) if isinstance(raw, list) else entry["token"].encode()
                        tokens.append((data.hex(), float(entry["logprob"]), None))
                    runs.append(Run(source, n, job.temperature, job.messages[-1][1], tokens,
                                    time.perf_counter() - started))  # fmt: skip
    return runs


def quantiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {"n": len(ordered), "p50": q(0.5), "p99": q(0.99), "p999": q(0.999),
            "max": ordered[-1]}  # fmt: skip


def evidence_of(run: Run) -> list[TokenEvidence]:
    return [TokenEvidence(bytes.fromhex(h), lp, i) for h, lp, i in run.tokens]


def score_runs(scorer: TorchScorer, runs: Iterable[Run]) -> list[dict[str, Any]]:
    scored = []
    for run in runs:
        tokens = evidence_of(run)
        started = time.perf_counter()
        scores = scorer.score([("user", run.prompt)], tokens)
        seconds = time.perf_counter() - started
        scored.append({"run": asdict(run), "scores": [asdict(s) for s in scores],
                       "score_seconds": seconds})  # fmt: skip
    return scored


def analyse(scored: list[dict[str, Any]], thresholds: Thresholds) -> list[dict[str, Any]]:
    """One row per (source, temperature): deviation quantiles and the judge's decisions."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for item in scored:
        run = item["run"]
        groups.setdefault((run["source"], run["temperature"]), []).append(item)
    rows = []
    for (source, temperature), items in groups.items():
        deviations, normalised, ranks, floors, means, gaps = [], [], [], [], [], []
        failed = inconclusive = positions = 0
        for item in items:
            tokens = evidence_of(Run(**item["run"]))
            scores = [PositionScore(**s) for s in item["scores"]]
            job_dev = []
            for token, score in zip(tokens, scores, strict=True):
                if score.logprob is None:
                    continue
                d = abs(token.logprob - score.logprob)
                deviations.append(d)
                job_dev.append(d)
                normalised.append(d / thresholds.tolerance(score.logprob))
                ranks.append(float(score.rank or 0))
                gaps.append((score.top_logprob or 0.0) - score.logprob)
                floors.append(score.logprob)
            if job_dev:
                means.append(statistics.fmean(job_dev))
            finding = judge(scores, tokens, item["run"]["temperature"], thresholds)
            positions += finding.positions_checked
            failed += finding.outcome == "failed"
            inconclusive += finding.outcome == "inconclusive"
        caught = failed / len(items)
        rows.append({
            "source": source, "temperature": temperature, "jobs": len(items),
            "positions": positions,
            "deviation": quantiles(deviations), "normalised": quantiles(normalised),
            "rank_max": max(ranks, default=0), "min_trusted_logprob": min(floors, default=0),
            "top_gap_max": max(gaps, default=0),
            "job_mean_deviation": quantiles(means),
            "failed": failed, "inconclusive": inconclusive,
            "checks_for_99": (math.ceil(math.log(0.01) / math.log(1 - caught))
                              if 0 < caught < 1 else (1 if caught == 1 else None)),
        })  # fmt: skip
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    header = (f"{'source':13} {'T':>4} {'jobs':>4} {'pos':>5} {'dev p50':>8} {'p99':>7} "
              f"{'p99.9':>7} {'max':>7} {'norm p99':>8} {'norm max':>8} {'rank max':>8} "
              f"{'min lp':>7} {'top gap':>7} {'job mean p50':>12} {'max':>6} {'failed':>6} "
              f"{'incon':>5} {'N(99%)':>6}")  # fmt: skip
    print(header)
    for r in rows:
        d, n, m = r["deviation"], r["normalised"], r["job_mean_deviation"]
        print(f"{r['source']:13} {r['temperature']:>4} {r['jobs']:>4} {r['positions']:>5} "
              f"{d.get('p50', 0):>8.4f} {d.get('p99', 0):>7.3f} {d.get('p999', 0):>7.3f} "
              f"{d.get('max', 0):>7.3f} {n.get('p99', 0):>8.3f} {n.get('max', 0):>8.3f} "
              f"{r['rank_max']:>8.0f} {r['min_trusted_logprob']:>7.2f} {r['top_gap_max']:>7.2f} "
              f"{m.get('p50', 0):>12.4f} {m.get('max', 0):>6.3f} {r['failed']:>6} "
              f"{r['inconclusive']:>5} {r['checks_for_99']!s:>6}")  # fmt: skip


def cost(scored: list[dict[str, Any]]) -> dict[str, float]:
    """Scorer seconds per check vs the honest bf16 node's seconds for the same job."""
    honest = [i for i in scored if i["run"]["source"] == "honest-fp32"] or scored
    gen = statistics.fmean(i["run"]["seconds"] for i in honest)
    scoring = statistics.fmean(i["score_seconds"] for i in honest)
    tokens = statistics.fmean(len(i["run"]["tokens"]) for i in honest)
    return {"node_seconds_per_job": gen, "scorer_seconds_per_check": scoring,
            "tokens_per_job": tokens}  # fmt: skip


def measure_cost(checks: int, max_tokens: int, interval_s: float, load: float) -> dict[str, float]:
    """One check's compute, alone on this machine: the node's job (the built-in engine's
    bf16 model generating greedily, batch of one, KV cache) against the verifier's pass
    (`TorchScorer.score`), and what the default rate costs a node busy `load` of its time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model_path()
    options = {"gguf_file": path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **options)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, dtype=torch.bfloat16, **options
    ).eval()
    vocab = token_bytes(tokenizer)
    scorer = TorchScorer()
    scorer.load()
    node_s, verifier_s, tokens = [], [], []
    for n in range(checks + 1):  # the first is a warm-up
        messages = (("user", PROMPTS[n % len(PROMPTS)]),)
        ids = tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in messages],
            add_generation_prompt=True, return_tensors="pt", return_dict=True,
        )  # fmt: skip
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=2)  # fmt: skip
        generated = time.perf_counter() - started
        new = [int(t) for t in out[0, ids["input_ids"].shape[1] :]]
        evidence = [TokenEvidence(vocab[t], -0.1, t) for t in new]
        started = time.perf_counter()
        scorer.score(messages, evidence)
        scored = time.perf_counter() - started
        if n:
            node_s.append(generated)
            verifier_s.append(scored)
            tokens.append(len(new))
    node, verifier = statistics.fmean(node_s), statistics.fmean(verifier_s)
    return {
        "checks": checks, "tokens_per_check": statistics.fmean(tokens),
        "node_seconds_per_check": node, "verifier_seconds_per_check": verifier,
        "interval_s": interval_s, "node_load": load,
        "fraction_of_inference_compute": (node + verifier) / (load * interval_s),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--sources", default="honest-bf16,honest-fp32,llama.cpp,truncated,"
                        "perturbed-3b,perturbed-2b,perturbed-half")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="save the scored runs (JSON)")
    parser.add_argument("--from", dest="saved", type=Path, action="append", default=[],
                        help="analyse saved runs instead of generating")  # fmt: skip
    parser.add_argument(
        "--cost",
        action="store_true",
        help="only measure one check's compute and the default rate's share",
    )
    parser.add_argument("--load", type=float, default=0.25,
                        help="--cost: the fraction of its time a node serves users")  # fmt: skip
    args = parser.parse_args(argv)
    if args.cost:
        from troop_verifier.settings import DEFAULT_INTERVAL_S

        print(json.dumps(measure_cost(8, 64, DEFAULT_INTERVAL_S, args.load)))
        return
    scored: list[dict[str, Any]] = []
    for saved in args.saved:
        scored += json.loads(saved.read_text())
    if not args.saved:
        from tests.verification.cheat_models import (
            THREE_BIT_NOISE,
            TWO_BIT_NOISE,
            perturbed,
            truncated,
        )

        source = default_model_path()
        work = jobs(args.jobs, args.max_tokens)
        scorer = TorchScorer()
        scorer.load()
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.sources.split(","):
                started = time.perf_counter()
                if name == "honest-bf16":
                    runs = generate_torch(source, "bfloat16", work, name)
                elif name == "honest-fp32":
                    runs = generate_torch(source, "float32", work, name)
                elif name == "llama.cpp":
                    runs = asyncio.run(generate_llama(source, work, name))
                elif name == "truncated":
                    path = truncated(source, Path(tmp) / "truncated.gguf", 15)
                    runs = generate_torch(path, "bfloat16", work, name)
                elif name.startswith("perturbed"):
                    scale = {"perturbed-3b": THREE_BIT_NOISE, "perturbed-2b": TWO_BIT_NOISE,
                             "perturbed-half": 0.5}[name]  # fmt: skip
                    path = perturbed(source, Path(tmp) / f"{name}.gguf", scale)
                    runs = generate_torch(path, "bfloat16", work, name)
                else:
                    raise SystemExit(f"unknown source {name}")
                scored += score_runs(scorer, runs)
                print(f"{name}: {len(runs)} jobs in {time.perf_counter() - started:.0f} s",
                      flush=True)  # fmt: skip
                if args.out:
                    args.out.write_text(json.dumps(scored))
    print_rows(analyse(scored, Thresholds()))
    print(json.dumps(cost(scored)))


if __name__ == "__main__":
    main()
