"""Generation: cache and batching equivalences, the sampling knobs, stops and finish reasons, validation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from neuroq.errors import ConfigError
from neuroq.generate import GenerationConfig, generate, generate_ids
from neuroq.model import NeuroQ, NeuroQConfig
from neuroq.sampling import apply_repetition_penalty_, ban_repeated_ngrams_, filter_logits
from neuroq.tokenizer import NeuroQTokenizer, TokenizerConfig

MODES = ("layered", "brain", "gpt")
VOCAB = 61
PROMPTS = [[2, 7, 8, 9, 10, 11], [2, 12], [2, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]]
GREEDY = GenerationConfig(max_new_tokens=12, temperature=0.0, repetition_penalty=1.0, no_repeat_ngram_size=0,
                          stop_at_user=False)




def tiny(mode: str = "layered", vocab_size: int = VOCAB) -> NeuroQ:
    torch.manual_seed(0)
    return NeuroQ(NeuroQConfig.preset("tiny", mode=mode, vocab_size=vocab_size))


def one_char_per_token(ids: list[int]) -> str:
    """A stand-in tokenizer decode: token i is one hiragana character, so text offsets equal token offsets."""
    return "".join(chr(0x3041 + i) for i in ids)


def completions(results: list[list]) -> list[list[int]]:
    return [sample.token_ids for samples in results for sample in samples]


def greedy(model: NeuroQ, prompts: list[list[int]], **changes) -> list[list[int]]:
    config = replace(GREEDY, **changes)
    return completions(generate_ids(model, prompts, config, eos_ids=()))


@pytest.mark.parametrize("mode", MODES)
def test_greedy_generation_with_kv_cache_equals_recomputing_without_it(mode: str) -> None:
    model = tiny(mode)
    assert greedy(model, PROMPTS, use_cache=True) == greedy(model, PROMPTS, use_cache=False)


@pytest.mark.parametrize("mode", MODES)
def test_batched_greedy_generation_of_different_length_prompts_equals_each_alone(mode: str) -> None:
    model = tiny(mode)
    alone = [greedy(model, [prompt])[0] for prompt in PROMPTS]
    assert greedy(model, PROMPTS) == alone
    # A row that finishes early keeps decoding padding without disturbing the others.
    eos = alone[0][2]
    batched = generate_ids(model, PROMPTS, GREEDY, eos_ids=(eos,))
    for samples, prompt in zip(batched, PROMPTS):
        assert samples == generate_ids(model, [prompt], GREEDY, eos_ids=(eos,))[0]
    assert batched[0][0].finish_reason == "stop" and eos not in batched[0][0].token_ids


def test_generation_restores_the_models_training_mode() -> None:
    model = tiny().train()
    greedy(model, PROMPTS[:1])
    assert model.training


def test_repetition_penalty_divides_positive_logits_and_multiplies_negative_ones() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    assert apply_repetition_penalty_(logits, torch.tensor([[0, 1, 0]]), 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]


def test_top_k_keeps_the_k_largest_logits() -> None:
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 2.5]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, False, True]]


def test_top_p_keeps_the_smallest_set_of_likely_tokens_reaching_p() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isfinite(filter_logits(logits, top_p=0.75)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.4)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()
    # top-k first: of the two left, 0.5 / 0.8 = 62.5% of the mass is already above 0.6
    assert torch.isfinite(filter_logits(logits, top_k=2, top_p=0.6)).tolist() == [[True, False, False, False]]


def banned_sets(rows: list[list[int]], n: int, vocab: int = 10) -> list[set[int]]:
    """ban_repeated_ngrams_ on left-padded rows (pad 0), as the sets of token ids it sets to -inf per row."""
    width = max(map(len, rows))
    history = torch.tensor([[0] * (width - len(row)) + row for row in rows])
    real = torch.tensor([[False] * (width - len(row)) + [True] * len(row) for row in rows])
    logits = ban_repeated_ngrams_(torch.zeros(len(rows), vocab), history, real, n)
    return [set(torch.nonzero(row == float("-inf")).flatten().tolist()) for row in logits]


def test_no_repeat_ngram_bans_the_token_that_would_repeat_a_trigram() -> None:
    assert banned_sets([[5, 6, 7, 5, 6]], 3) == [{7}]
    assert banned_sets([[5, 6, 7, 5, 6, 8]], 3) == [set()]
    assert banned_sets([[5, 6, 7, 5, 6, 8, 5, 6]], 3) == [{7, 8}]


def test_generated_text_never_repeats_a_bigram_under_no_repeat_ngram_size_2() -> None:
    model = tiny("gpt")
    prompt = [2, 7, 8, 7, 8, 9]
    config = GenerationConfig(max_new_tokens=40, temperature=0.0, repetition_penalty=1.0, no_repeat_ngram_size=2)
    seq = prompt + generate_ids(model, [prompt], config, eos_ids=())[0][0].token_ids
    for end in range(len(prompt), len(seq)):
        earlier = {tuple(seq[i:i + 2]) for i in range(end - 1)}
        assert tuple(seq[end - 1:end + 1]) not in earlier


def test_stop_string_cuts_the_text_before_it_and_finishes_with_stop() -> None:
    model = tiny()
    full = greedy(model, PROMPTS)
    text = one_char_per_token(full[0])
    stop = text[4:6]
    first = text.index(stop)
    config = replace(GREEDY, stop=(stop, "never-generated"))
    results = generate_ids(model, PROMPTS, config, eos_ids=(), decode=one_char_per_token)
    sample = results[0][0]
    assert (sample.text, sample.finish_reason) == (text[:first], "stop")
    assert sample.token_ids == full[0][:first + 2] and sample.completion_tokens == first + 2
    for samples, expected in zip(results[1:], full[1:]):
        if stop not in one_char_per_token(expected):
            assert (samples[0].finish_reason, samples[0].token_ids) == ("length", expected)


def test_eos_and_user_tokens_stop_a_sample_and_are_not_part_of_it() -> None:
    model = tiny()
    full = greedy(model, PROMPTS[:1])[0]
    marker = full[3]
    cut = full.index(marker)
    by_eos = generate_ids(model, PROMPTS[:1], GREEDY, eos_ids=(marker,))[0][0]
    assert (by_eos.token_ids, by_eos.finish_reason) == (full[:cut], "stop")
    at_user = replace(GREEDY, stop_at_user=True)
    by_user = generate_ids(model, PROMPTS[:1], at_user, eos_ids=(), user_id=marker)[0][0]
    assert (by_user.token_ids, by_user.finish_reason) == (full[:cut], "stop")
    ignored = generate_ids(model, PROMPTS[:1], GREEDY, eos_ids=(), user_id=marker)[0][0]
    assert (ignored.token_ids, ignored.finish_reason, ignored.prompt_tokens) == (full, "length", len(PROMPTS[0]))


def test_a_seed_makes_sampling_reproducible_and_n_gives_n_samples_per_prompt() -> None:
    model = tiny("brain")
    config = GenerationConfig(max_new_tokens=8, temperature=1.0, top_k=0, top_p=1.0, seed=7, n=3)
    first = generate_ids(model, PROMPTS[:2], config, eos_ids=())
    assert [len(samples) for samples in first] == [3, 3]
    assert first == generate_ids(model, PROMPTS[:2], config, eos_ids=())
    assert len({tuple(s.token_ids) for s in first[0]}) > 1, "n samples of one prompt should differ"
    other_seed = replace(config, seed=8)
    assert completions(first) != completions(generate_ids(model, PROMPTS[:2], other_seed, eos_ids=()))


def test_prompts_longer_than_the_context_are_cut_from_the_left() -> None:
    model = tiny("gpt")  # max_seq_len 128
    torch.manual_seed(3)
    long_prompt = torch.randint(6, VOCAB, (150,)).tolist()
    config = replace(GREEDY, max_new_tokens=8)
    sample = generate_ids(model, [long_prompt], config, eos_ids=())[0][0]
    assert sample.prompt_tokens == 120
    assert sample.token_ids == greedy(model, [long_prompt[-120:]], max_new_tokens=8)[0]
    strict = replace(config, truncation="error")
    with pytest.raises(ConfigError, match="prompt 0 has 150 tokens but only 120 fit"):
        generate_ids(model, [long_prompt], strict)


def test_max_new_tokens_must_leave_room_for_the_prompt() -> None:
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate_ids(tiny(), PROMPTS, GenerationConfig(max_new_tokens=128))


def test_temperature_moves_linearly_from_temp_max_to_temp_min() -> None:
    scheduled = GenerationConfig(max_new_tokens=5, temp_min=0.2, temp_max=1.0)
    assert [round(scheduled.temperature_at(i), 6) for i in range(5)] == [1.0, 0.8, 0.6, 0.4, 0.2]
    constant = GenerationConfig(max_new_tokens=5, temperature=0.7)
    assert {constant.temperature_at(i) for i in range(5)} == {0.7}


def test_max_length_is_an_alias_of_max_new_tokens() -> None:
    assert GenerationConfig(max_length=9).max_new_tokens == 9
    with pytest.raises(ConfigError, match="max_length"):
        GenerationConfig(max_length=9, max_new_tokens=10)


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("max_new_tokens", 0),
        ("temperature", -0.1),
        ("temp_max", float("inf")),
        ("top_k", -1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("repetition_penalty", 0.0),
        ("no_repeat_ngram_size", -1),
        ("n", 0),
        ("stop", ("",)),
        ("seed", "42"),
        ("truncation", "right"),
    ],
)
def test_invalid_knobs_raise_config_error_naming_the_knob(knob: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^{knob} "):
        GenerationConfig(**{knob: value})


def test_temp_min_above_temp_max_is_refused() -> None:
    with pytest.raises(ConfigError, match="temp_min"):
        GenerationConfig(temp_min=1.2, temp_max=0.5)


JAPANESE = [
    "<USER>こんにちは<ASSISTANT>こんにちは、今日はいい天気ですね。",
    "<USER>お元気ですか<ASSISTANT>はい、元気です。あなたはどうですか。",
    "<USER>好きな食べ物は何ですか<ASSISTANT>お寿司とラーメンが好きです。",
    "<USER>週末は何をしますか<ASSISTANT>公園を散歩して、本を読むつもりです。",
    "<USER>東京の天気はどうですか<ASSISTANT>朝は雨でしたが、午後から晴れました。",
    "<USER>おすすめの本はありますか<ASSISTANT>夏目漱石の小説をおすすめします。",
    "<USER>日本語は難しいですか<ASSISTANT>漢字は難しいですが、とても面白いです。",
    "<USER>音楽を聴きますか<ASSISTANT>はい、毎晩ピアノの曲を聴いています。",
    "電車が遅れたので、会議に少し遅刻してしまった。",
    "桜の花びらが風に舞って、川面を薄紅色に染めていた。",
    "祖母の作る味噌汁は、いつも少しだけ甘くて温かい。",
    "夏休みには家族で海へ行き、花火を見る予定です。",
]


@pytest.fixture(scope="module")
def tokenizer() -> NeuroQTokenizer:
    config = TokenizerConfig(vocab_size=400, character_coverage=1.0, hard_vocab_limit=False, num_threads=1)
    return NeuroQTokenizer.train(JAPANESE, config)


def test_generate_decodes_text_for_each_prompt_with_counts_and_finish_reasons(tokenizer: NeuroQTokenizer) -> None:
    model = tiny("layered", vocab_size=tokenizer.vocab_size)
    prompts = ["<USER>こんにちは<ASSISTANT>", "<USER>好きな食べ物は何ですか<ASSISTANT>"]
    results = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=6, seed=0, n=2))
    assert [len(samples) for samples in results] == [2, 2]
    for prompt, samples in zip(prompts, results):
        for sample in samples:
            assert sample.prompt_tokens == len(tokenizer.encode(prompt, add_bos=True))
            assert sample.completion_tokens == len(sample.token_ids) <= 6
            assert sample.finish_reason in ("stop", "length")
            assert sample.text == tokenizer.decode(sample.token_ids)
    single = generate(model, tokenizer, prompts[0], GenerationConfig(max_new_tokens=6, seed=0, n=2))
    assert [len(samples) for samples in single] == [2]


def test_on_step_streams_each_rows_tokens_as_decoded_and_a_stopped_row_ends_cancelled() -> None:
    model = tiny()
    config = GenerationConfig(max_new_tokens=10, seed=3, n=2, stop_at_user=False)
    expected = generate_ids(model, PROMPTS, config, eos_ids=(5,))
    streamed: list[list[int]] = [[] for _ in range(6)]
    last_finished: list = []

    def collect(step):
        for r, token in enumerate(step.tokens):
            if token is not None:
                streamed[r].append(token)
        last_finished[:] = step.finished
        return None

    assert generate_ids(model, PROMPTS, config, eos_ids=(5,), on_step=collect) == expected
    assert streamed == completions(expected)
    assert last_finished == [s.finish_reason for samples in expected for s in samples]

    def stop_row_1_after_3(step):
        return [1] if step.index == 2 else None

    full = [s for samples in generate_ids(model, PROMPTS, config, eos_ids=()) for s in samples]
    cancelled = [s for samples in generate_ids(model, PROMPTS, config, eos_ids=(), on_step=stop_row_1_after_3)
                 for s in samples]
    assert (cancelled[1].finish_reason, cancelled[1].token_ids) == ("cancelled", full[1].token_ids[:3])
    assert [s for r, s in enumerate(cancelled) if r != 1] == [s for r, s in enumerate(full) if r != 1]


RAGGED = [[2, 7, 8, 9, 10, 11, 7, 8], [2, 12], [2, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [2, 9, 9, 9]]
SAMPLED = GenerationConfig(max_new_tokens=12, temperature=1.0, temp_min=0.5, seed=11, n=2, stop_at_user=False)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", [GREEDY, SAMPLED, GenerationConfig(max_new_tokens=12, seed=5, stop_at_user=False)],
                         ids=["greedy", "sampled", "default-knobs"])
def test_static_cache_decodes_the_same_tokens_as_the_dynamic_cache_on_a_ragged_batch(mode: str, config) -> None:
    model = tiny(mode)
    dynamic = generate_ids(model, RAGGED, replace(config, decoder="dynamic"), eos_ids=(3,))
    assert generate_ids(model, RAGGED, replace(config, decoder="static"), eos_ids=(3,)) == dynamic


def test_the_captured_step_decodes_the_same_tokens_as_the_dynamic_cache() -> None:
    # The CUDA path (torch.compile, reduce-overhead) run through inductor on CPU; the batch of 4 rows x n=2 is
    # padded to 8 rows, the cache spans max_seq_len.
    model = tiny("layered")
    for config in (GREEDY, SAMPLED):
        dynamic = generate_ids(model, RAGGED[:3], replace(config, decoder="dynamic"), eos_ids=())
        assert generate_ids(model, RAGGED[:3], replace(config, decoder="graph"), eos_ids=()) == dynamic


def test_each_filter_matches_its_definition_on_every_row_of_a_batch() -> None:
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 2.5, 0.0],
                           [4.0, -2.0, -3.0, 1.0, 0.5, 0.2],
                           [-1.0, -0.5, -4.0, -0.1, -2.0, -3.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, False, True, False],
                             [True, False, False, True, False, False],
                             [False, True, False, True, False, False]]
    probs = logits.softmax(-1)
    for p in (0.3, 0.6, 0.9, 0.99):
        kept = torch.isfinite(filter_logits(logits, top_p=p))
        for row, keep in zip(probs, kept):
            order = row.argsort(descending=True).tolist()
            need = next(i + 1 for i in range(len(order)) if row[order[:i + 1]].sum() >= p)  # smallest set reaching p
            assert sorted(torch.nonzero(keep).flatten().tolist()) == sorted(order[:need])
    seen_ids = torch.tensor([[0, 2, 3, 2], [1, 4, 5, 5], [0, 1, 2, 0]])
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, seen_ids, True)
    penalised = apply_repetition_penalty_(logits.clone(), seen_ids, 2.0)
    expected = torch.where(seen, torch.where(logits > 0, logits / 2, logits * 2), logits)
    assert torch.equal(penalised, expected)


def test_the_ngram_ban_blocks_exactly_the_banned_continuations_of_each_row_without_leaking() -> None:
    rows = [[1, 2, 3, 1, 2], [4, 1, 2, 5, 6, 1, 2], [1, 2], [9, 1, 2, 7, 8, 9, 1]]
    # Row 0: "1 2" was followed by 3. Row 1: by 5. Row 2 has no earlier "1 2". Row 3 ends in "9 1": followed by 2.
    assert banned_sets(rows, 3) == [{3}, {5}, set(), {2}]
    assert banned_sets(rows, 2) == [{3}, {5}, set(), {2}]
    assert banned_sets(rows, 1) == [{1, 2, 3}, {1, 2, 4, 5, 6}, {1, 2}, {1, 2, 7, 8, 9}]


def test_rows_with_different_histories_sample_independently_of_each_other() -> None:
    # A row's tokens do not depend on what the other rows hold: greedy with every filter on, alone and batched.
    model = tiny("brain")
    config = replace(GREEDY, repetition_penalty=1.3, no_repeat_ngram_size=2)
    alone = [generate_ids(model, [row], config, eos_ids=())[0][0].token_ids for row in RAGGED]
    assert completions(generate_ids(model, RAGGED, config, eos_ids=())) == alone
