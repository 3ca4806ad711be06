"""Generation throughput of NeuroQ layered / brain / gpt.

``--decoders`` (issue 13): decode steps per second, prefill excluded, of equal E128 / 4-layer models at prompt
64, batch 1 and 32, greedy and default knobs, for each KV-cache decoder (dynamic, static, and graph on CUDA),
beside Hugging Face ``generate`` on a GPT-2 of the same size in the same process; then the issue's ratios. Steps
are timed from the first new token to the last (our ``on_step`` hook, HF's streamer), best of ``--repeats``.

Otherwise, at the spec's default sizes: tokens/s with the KV cache vs recomputing the whole context each step,
at several prompt lengths (batch 1, and other batch sizes on request), and batch-N vs batch-1 throughput with the
cache (prefill included).

Weights are random (throughput does not depend on them); eos is disabled, so every row generates every token.
The model's max_seq_len is raised to fit the longest context.

    python -m bench.bench_generate --decoders                          # CPU
    python -m bench.bench_generate --decoders --device cuda --dtype bf16
    python -m bench.bench_generate --device cpu --quick
    python -m bench.bench_generate --device cuda --dtype bf16 --cache-batches 1,32
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from neuroq.generate import GenerationConfig, generate_ids
from neuroq.model import NeuroQ, NeuroQConfig


@dataclass
class Settings:
    device: str
    dtype: str
    modes: list[str]
    contexts: list[int]
    new_tokens: int
    batch: int
    cache_batches: list[int]


def tokens_per_second(model: NeuroQ, settings: Settings, context: int, batch: int, use_cache: bool) -> float:
    """Generated tokens per wall-clock second, prefill included, for ``batch`` random prompts of ``context`` ids."""
    gen = torch.Generator().manual_seed(context)
    prompts = torch.randint(6, model.config.vocab_size, (batch, context), generator=gen).tolist()
    config = GenerationConfig(max_new_tokens=settings.new_tokens, use_cache=use_cache, stop_at_user=False, seed=0)
    autocast = (torch.autocast(settings.device, dtype=torch.bfloat16) if settings.dtype == "bf16"
                else contextlib.nullcontext())
    with autocast:
        generate_ids(model, prompts[:1], GenerationConfig(max_new_tokens=2, use_cache=use_cache), eos_ids=())
        if settings.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        samples = generate_ids(model, prompts, config, eos_ids=())
        if settings.device == "cuda":
            torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return sum(s.completion_tokens for group in samples for s in group) / elapsed


# The issue's comparison: equal E128 / 4-layer models, FFN 4E as GPT-2's, prompt 64.
DECODER_MODEL = dict(n_embd=128, n_ff=512, n_head=4, n_layer=4, dropout=0.0)
DECODER_CONTEXT = 64
GREEDY = GenerationConfig(temperature=0.0, repetition_penalty=1.0, no_repeat_ngram_size=0, stop_at_user=False)
DEFAULT = GenerationConfig(stop_at_user=False, seed=0)
# Hugging Face generate with the same knobs (transformers' names).
HF_KNOBS = {"greedy": dict(do_sample=False),
            "default": dict(do_sample=True, temperature=0.8, top_k=40, top_p=0.9, repetition_penalty=1.1,
                            no_repeat_ngram_size=3)}


class _Clock:
    """Timestamps of decode steps: our decoder's ``on_step`` hook, or an HF streamer (its first put is the prompt).
    The device is synchronised first, so each stamp is when that step's token exists."""

    def __init__(self, sync: Callable[[], None]):
        self.sync, self.stamps = sync, []

    def __call__(self, step=None) -> None:
        self.sync()
        self.stamps.append(time.perf_counter())

    put = __call__

    def end(self) -> None:
        pass


def step_seconds(run: Callable[[int, _Clock], None], new_tokens: int, repeats: int, sync: Callable[[], None],
                 skip: int = 0) -> float:
    """Seconds per decode step, prefill excluded: from the first new token's stamp to the last one's, over
    ``new_tokens - 1`` steps, the best of ``repeats`` runs (other jobs on a shared machine only slow a run down).
    ``skip`` stamps come before the first new token."""
    run(2, _Clock(sync))  # warm-up: allocations, and the graph decoder's compile and capture
    best = float("inf")
    for _ in range(repeats):
        clock = _Clock(sync)
        run(new_tokens, clock)
        stamps = clock.stamps[skip:]
        best = min(best, (stamps[-1] - stamps[0]) / (len(stamps) - 1))
    return best


def decoder_table(settings: Settings, repeats: int) -> str:
    import transformers  # only this table needs it

    device = torch.device(settings.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if settings.dtype == "bf16"
                else contextlib.nullcontext())
    decoders = ["dynamic", "static"] + (["graph"] if device.type == "cuda" else [])
    max_seq_len = DECODER_CONTEXT + settings.new_tokens
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(6, 8000, (max(settings.cache_batches), DECODER_CONTEXT), generator=gen)
    rates: dict[tuple, float] = {}
    rows = ["| model | batch | knobs | " + " | ".join(f"{d} tok/s" for d in decoders) + " | static vs dynamic |",
            "| --- | ---: | --- | " + " | ".join("---:" for _ in decoders) + " | ---: |"]
    with autocast:
        for mode in settings.modes:
            torch.manual_seed(0)
            model = NeuroQ(NeuroQConfig.preset(mode, **DECODER_MODEL, max_seq_len=max_seq_len)).to(device).eval()
            for batch in settings.cache_batches:
                ids = prompts[:batch].tolist()
                for knobs, base in (("greedy", GREEDY), ("default", DEFAULT)):
                    for decoder in decoders:
                        def run(n: int, clock: _Clock, base=base, decoder=decoder) -> None:
                            generate_ids(model, ids, replace(base, max_new_tokens=n, decoder=decoder), eos_ids=(),
                                         on_step=clock)
                        rates[mode, batch, knobs, decoder] = batch / step_seconds(run, settings.new_tokens,
                                                                                  repeats, sync)
                    cells = " | ".join(_rate(rates[mode, batch, knobs, d]) for d in decoders)
                    ratio = rates[mode, batch, knobs, "static"] / rates[mode, batch, knobs, "dynamic"]
                    rows.append(f"| {mode} | {batch} | {knobs} | {cells} | {ratio:.2f}x |")
        hf_config = transformers.GPT2Config(vocab_size=8000, n_positions=max_seq_len, n_embd=128, n_layer=4,
                                            n_head=4, n_inner=512, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                            bos_token_id=None, eos_token_id=None)
        torch.manual_seed(0)
        hf = transformers.GPT2LMHeadModel(hf_config).to(device).eval()
        for batch in settings.cache_batches:
            input_ids = prompts[:batch].to(device)
            for knobs, hf_knobs in HF_KNOBS.items():
                def hf_run(n: int, clock: _Clock, hf_knobs=hf_knobs) -> None:
                    with torch.inference_mode():
                        hf.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n,
                                    min_new_tokens=n, pad_token_id=0, streamer=clock, **hf_knobs)
                rates["hf", batch, knobs] = batch / step_seconds(hf_run, settings.new_tokens, repeats, sync, skip=1)
                rows.append(f"| HF GPT-2 | {batch} | {knobs} | {_rate(rates['hf', batch, knobs])} | | |")
    return "\n".join(rows) + "\n\n" + _targets(rates, settings, decoders)


def _targets(rates: dict[tuple, float], settings: Settings, decoders: list[str]) -> str:
    """The issue's three CPU targets per mode, for the device's default decoder (static on CPU, graph on CUDA)."""
    small, large = min(settings.cache_batches), max(settings.cache_batches)
    best = decoders[-1]
    rows = [f"| mode ({best}) | batch-{large} / batch-{small}, default knobs (>= 8x) | batch-{large} step, "
            "default / greedy (<= 1.3x) | "
            f"batch-{small} greedy step vs HF (<= 0.6x) |", "| --- | ---: | ---: | ---: |"]
    for mode in settings.modes:
        scale = rates[mode, large, "default", best] / rates[mode, small, "default", best]
        sampler_cost = rates[mode, large, "greedy", best] / rates[mode, large, "default", best]
        vs_hf = rates["hf", small, "greedy"] / rates[mode, small, "greedy", best]
        rows.append(f"| {mode} | {scale:.1f}x | {sampler_cost:.2f}x | {vs_hf:.2f}x |")
    return "\n".join(rows)


def _rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s:,.0f}" if tokens_per_s >= 100 else f"{tokens_per_s:.3g}"


def run(settings: Settings) -> str:
    cache_rows = ["| mode | params | context | batch | tok/s with cache | tok/s without cache | speedup |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    batch_rows = [f"| mode | context | batch-1 tok/s | batch-{settings.batch} tok/s | ratio |",
                  "| --- | ---: | ---: | ---: | ---: |"]
    for mode in settings.modes:
        torch.manual_seed(0)
        config = NeuroQConfig.preset(mode, dropout=0.0, max_seq_len=max(settings.contexts) + settings.new_tokens)
        model = NeuroQ(config).to(settings.device).eval()
        params = f"{model.num_params(non_embedding=False) / 1e6:.2f}M"
        for batch in settings.cache_batches:
            for context in settings.contexts:
                cached = tokens_per_second(model, settings, context, batch, use_cache=True)
                recomputed = tokens_per_second(model, settings, context, batch, use_cache=False)
                cache_rows.append(f"| {mode} | {params} | {context} | {batch} | {_rate(cached)} | "
                                  f"{_rate(recomputed)} | {cached / recomputed:.1f}x |")
        context = min(settings.contexts)
        single = tokens_per_second(model, settings, context, 1, use_cache=True)
        batched = tokens_per_second(model, settings, context, settings.batch, use_cache=True)
        batch_rows.append(f"| {mode} | {context} | {_rate(single)} | {_rate(batched)} | {batched / single:.1f}x |")
    return "\n".join(cache_rows) + "\n\n" + "\n".join(batch_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast")
    parser.add_argument("--modes", default="layered,brain,gpt")
    parser.add_argument("--contexts", default="64,256,1024", help="prompt lengths in tokens")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="batch size compared with batch 1")
    parser.add_argument("--cache-batches", default="1", help="batch sizes of the cache vs no-cache table")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--quick", action="store_true", help="contexts 64,256, 16 new tokens, batch 8")
    parser.add_argument("--decoders", action="store_true",
                        help="the decoder table instead (issue 13): batches 1,32 unless --cache-batches says")
    parser.add_argument("--repeats", type=int, default=5, help="--decoders: timed runs per cell (best)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(
        device=args.device,
        dtype=args.dtype,
        modes=args.modes.split(","),
        contexts=[64, 256] if args.quick else [int(c) for c in args.contexts.split(",")],
        new_tokens=16 if args.quick else args.new_tokens,
        batch=8 if args.quick else args.batch,
        cache_batches=[int(b) for b in args.cache_batches.split(",")],
    )
    if args.decoders and args.cache_batches == parser.get_default("cache_batches"):
        settings.cache_batches = [1, 32]
    device_name = torch.cuda.get_device_name() if settings.device == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"NeuroQ generation, {device_name}, {settings.dtype}, torch {torch.__version__}, "
          f"{settings.new_tokens} new tokens per row\n")
    if args.decoders:
        print(decoder_table(settings, args.repeats))
    else:
        print(run(settings))


if __name__ == "__main__":
    main()
