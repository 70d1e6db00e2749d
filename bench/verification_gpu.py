"""How far an honest GPU worker's log-probabilities sit from the verifier's fp32 CPU copy.

    # on a machine with a GPU (the model's GGUF and torch + transformers + gguf there):
    python -m bench.verification_gpu generate --model FILE.gguf --out gpu.json
    python -m bench.verification_gpu engine --model FILE.gguf --out engine.json
    # here, with the verifier's trusted copy (fp32 on CPU):
    .venv/bin/python -m bench.verification_gpu compare gpu.json

`generate` answers every prompt greedily and sampled (temperature 0.8, seeded) in
bfloat16, float16 and float32 on the GPU, batched with left padding as a serving
engine batches, and records for each generated token the log-probability of the
raw logits (log_softmax, float32, before temperature) — what a worker puts in its
output evidence. `engine` runs the
same jobs through the worker's own engine (`TorchEngine`: continuous batching of
8 rows) at temperatures 0, 0.7 and 1, and records the evidence tokens it signs.
`compare` recomputes each sequence with one teacher-forced
forward pass in float32 on the CPU and prints the deviation quantiles per
precision: the honest noise that the verifier's thresholds must clear.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.prompts import PROMPTS

EXTRA_PROMPTS: tuple[str, ...] = (
    "Give me a recipe for a quick vegetarian dinner.",
    "Why do leaves change colour in autumn?",
    "Summarise the plot of Romeo and Juliet in three sentences.",
    "How do I reverse a list in Python?",
    "What are the benefits of regular exercise?",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "Write a haiku about the sea.",
    "Explain what an API is to a ten-year-old.",
    "What is the difference between weather and climate?",
    "Suggest three names for a bakery.",
    "How does a bicycle stay upright?",
    "Write a SQL query that counts the rows of a table named orders.",
    "What should I pack for a weekend hiking trip?",
    "Explain photosynthesis briefly.",
    "Give two arguments for and against working from home.",
    "What is 17 times 23? Show the steps.",
)

DTYPES = ("bfloat16", "float16", "float32")
TEMPERATURES = (0.0, 0.8)


def _load(path: Path, dtype: str, device: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    options = {"gguf_file": path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **options)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, dtype=getattr(torch, dtype), **options
    )
    return tokenizer, model.to(device).eval()  # type: ignore[arg-type]


def _prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    return [int(i) for i in (ids["input_ids"] if hasattr(ids, "keys") else ids)]


def _end_ids(tokenizer: Any, model: Any) -> set[int]:
    """The tokens that end an answer: the tokenizer's and the generation config's."""
    configured = model.generation_config.eos_token_id
    ends = set(configured if isinstance(configured, list) else [configured])
    return {int(i) for i in ends | {tokenizer.eos_token_id} if i is not None}


def _trimmed(record: dict[str, Any], ends: set[int]) -> dict[str, Any]:
    """The record up to its first end token (files written before `generate` stopped
    there hold the padding after it)."""
    for n, token in enumerate(record["tokens"]):
        if token in ends:
            return {**record, "tokens": record["tokens"][: n + 1],
                    "logprobs": record["logprobs"][: n + 1]}  # fmt: skip
    return record


def generate(model_path: Path, out: Path, max_tokens: int, device: str = "cuda") -> None:
    import torch

    prompts = PROMPTS + EXTRA_PROMPTS
    records: list[dict[str, Any]] = []
    for dtype in DTYPES:
        started = time.perf_counter()
        tokenizer, model = _load(model_path, dtype, device)
        eos = tokenizer.eos_token_id
        ends = _end_ids(tokenizer, model)
        for temperature in TEMPERATURES:
            batch = [_prompt_ids(tokenizer, p) for p in prompts]
            width = max(map(len, batch))
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
            ids = torch.tensor([[pad] * (width - len(b)) + b for b in batch], device=device)
            mask = torch.tensor(
                [[0] * (width - len(b)) + [1] * len(b) for b in batch], device=device
            )
            torch.manual_seed(1234)
            with torch.no_grad():
                result = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_tokens,
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_p=None,
                    top_k=None,
                    output_logits=True,
                    return_dict_in_generate=True,
                    pad_token_id=pad,
                )
            logits = torch.stack(result.logits, dim=1).float()  # batch, steps, vocab
            logprobs = torch.log_softmax(logits, dim=-1)
            generated = result.sequences[:, width:]
            for row, prompt in enumerate(prompts):
                tokens, values = [], []
                for step in range(generated.shape[1]):
                    token = int(generated[row, step])
                    tokens.append(token)
                    values.append(float(logprobs[row, step, token]))
                    if token in ends:  # generate pads a finished row after its end
                        break
                records.append(
                    {
                        "dtype": dtype,
                        "temperature": temperature,
                        "prompt": prompt,
                        "prompt_ids": batch[row],
                        "tokens": tokens,
                        "logprobs": values,
                    }
                )
        print(f"{dtype}: {time.perf_counter() - started:.1f} s", flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    out.write_text(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(0) if device == "cuda" else device,
                "torch": torch.__version__,
                "records": records,
            }
        )
    )


async def _engine_jobs(model_path: Path, dtype: str, max_tokens: int) -> list[dict[str, Any]]:
    """Every prompt at three temperatures through the worker's own engine (continuous
    batching, 8 rows), each job's evidence tokens as the worker would sign them."""
    import asyncio

    from troop_worker.engine.torch_engine import TorchEngine
    from troop_worker.engine.types import GenerationRequest, Message

    engine = TorchEngine(model_path=model_path, dtype=dtype, max_batch=8)
    await engine.load()

    async def one(prompt: str, temperature: float, seed: int) -> dict[str, Any]:
        request = GenerationRequest(
            (Message("user", prompt),), temperature=temperature, max_tokens=max_tokens, seed=seed
        )
        tokens = [t async for chunk in engine.stream(request) for t in chunk.tokens]
        return {
            "dtype": dtype,
            "temperature": temperature,
            "prompt": prompt,
            "tokens": [t.token_id for t in tokens],
            "logprobs": [t.logprob for t in tokens],
        }

    jobs = [
        one(prompt, temperature, seed)
        for seed, prompt in enumerate(PROMPTS + EXTRA_PROMPTS)
        for temperature in (0.0, 0.7, 1.0)
    ]
    try:
        return list(await asyncio.gather(*jobs))
    finally:
        await engine.close()


def engine(model_path: Path, out: Path, max_tokens: int) -> None:
    """The worker's engine on this machine's GPU, in bf16 and fp16."""
    import asyncio

    import torch

    records = []
    for dtype in ("bfloat16", "float16"):
        started = time.perf_counter()
        records += asyncio.run(_engine_jobs(model_path, dtype, max_tokens))
        print(f"engine {dtype}: {time.perf_counter() - started:.1f} s", flush=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    out.write_text(json.dumps({"device": device, "torch": torch.__version__, "records": records}))


def _quantiles(values: list[float]) -> str:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return (
        f"median {statistics.median(ordered):.4f}  p99 {at(0.99):.4f}  "
        f"p99.9 {at(0.999):.4f}  max {ordered[-1]:.4f}"
    )


def compare(data_path: Path, model_path: Path | None) -> None:
    import torch

    if model_path is None:
        from troop_common.model_files import default_model_path

        model_path = default_model_path()
    data = json.loads(data_path.read_text())
    tokenizer, model = _load(model_path, "float32", "cpu")
    ends = _end_ids(tokenizer, model)
    by_dtype: dict[str, list[float]] = {}
    jobs: dict[str, list[float]] = {}
    prompt_ids: dict[str, list[int]] = {}
    for record in data["records"]:
        record = _trimmed(record, ends)
        if "prompt_ids" not in record:  # from `engine`: the worker's chat template
            prompt = record["prompt"]
            if prompt not in prompt_ids:
                prompt_ids[prompt] = _prompt_ids(tokenizer, prompt)
            record["prompt_ids"] = prompt_ids[prompt]
        ids = record["prompt_ids"] + record["tokens"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        trusted = torch.log_softmax(logits, dim=-1)
        start = len(record["prompt_ids"]) - 1
        deviations = [
            abs(float(trusted[start + i, token]) - claimed)
            for i, (token, claimed) in enumerate(
                zip(record["tokens"], record["logprobs"], strict=True)
            )
        ]
        key = f"{record['dtype']} T={record['temperature']}"
        by_dtype.setdefault(key, []).extend(deviations)
        jobs.setdefault(key, []).append(statistics.fmean(deviations))
    print(f"GPU: {data['device']}, torch {data['torch']}; verifier: float32 on CPU")
    for key, values in by_dtype.items():
        print(f"{key:<18} {len(values):>5} positions  |Δ logprob| {_quantiles(values)}")
        print(f"{'':<18} {len(jobs[key]):>5} jobs       mean |Δ| per job: max {max(jobs[key]):.4f}")


def judge_records(data_path: Path, model_path: Path | None) -> None:
    """Each recorded job through the verifier itself (`TorchScorer` + `judge` with the
    default thresholds): how many honest GPU jobs it would fail."""
    from collections import Counter

    from troop_common.evidence import TokenEvidence
    from troop_verifier.judging import DEFAULT_THRESHOLDS, judge
    from troop_verifier.scoring import TorchScorer

    data = json.loads(data_path.read_text())
    scorer = TorchScorer(model_path=model_path)
    if model_path is None:
        from troop_common.model_files import default_model_path

        model_path = default_model_path()
    ends = _end_ids(*_load(model_path, "float32", "cpu"))
    outcomes: dict[str, Counter[str]] = {}
    worst: dict[str, float] = {}
    for record in data["records"]:
        record = _trimmed(record, ends)
        tokens = [
            TokenEvidence(b"", logprob, token_id)
            for token_id, logprob in zip(record["tokens"], record["logprobs"], strict=True)
        ]
        scores = scorer.score((("user", record["prompt"]),), tokens)
        finding = judge(scores, tokens, record["temperature"], DEFAULT_THRESHOLDS)
        key = f"{record['dtype']} T={record['temperature']}"
        outcomes.setdefault(key, Counter())[str(finding.outcome)] += 1
        share = finding.positions_failed / max(1, finding.positions_checked)
        worst[key] = max(worst.get(key, 0.0), share)
    print(f"GPU: {data['device']}; the verifier's judge, default thresholds")
    for key, counts in outcomes.items():
        print(f"{key:<18} {dict(counts)}  worst share of failing positions {worst[key]:.2%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate")
    gen.add_argument("--model", type=Path, required=True)
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--device", default="cuda")
    eng = commands.add_parser("engine")
    eng.add_argument("--model", type=Path, required=True)
    eng.add_argument("--out", type=Path, required=True)
    eng.add_argument("--max-tokens", type=int, default=64)
    cmp_ = commands.add_parser("compare")
    cmp_.add_argument("data", type=Path)
    cmp_.add_argument("--model", type=Path)
    jdg = commands.add_parser("judge")
    jdg.add_argument("data", type=Path)
    jdg.add_argument("--model", type=Path)
    args = parser.parse_args()
    if args.command == "generate":
        generate(args.model, args.out, args.max_tokens, args.device)
    elif args.command == "engine":
        engine(args.model, args.out, args.max_tokens)
    elif args.command == "judge":
        judge_records(args.data, args.model)
    else:
        compare(args.data, args.model)


if __name__ == "__main__":
    main()
