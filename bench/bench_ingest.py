"""WET processing throughput of neuroq.ingest, on one core, from a generated multi-MB gzip WET file.

    python bench/bench_ingest.py                      # ~3,000 records per mix, prints a markdown table
    python bench/bench_ingest.py --records 10000 --repeat 3

Two mixes: "cc-like" (1 page in 20 Japanese, the rest English and Chinese, roughly what a Common Crawl WET
file holds) and "ja-only" (every page Japanese, 10% near and 5% exact duplicates). Three stages, each
including the previous ones: parse (gzip + warcio + UTF-8 decode), + quality filters, + dedup. The file is read
from local disk, so network time is excluded: these are the CPU costs a worker pays per core.
"""

from __future__ import annotations

import argparse
import io
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from warcio.warcwriter import WARCWriter

from neuroq.ingest import DedupConfig, Deduplicator, QualityConfig, QualityFilter, iter_wet_records

JA_SENTENCES = [
    "{place}の{thing}は例年{month}月ごろに見頃を迎えます。",
    "朝{hour}時前に出かけると、人が少なく落ち着いて{thing}を楽しめます。",
    "{place}駅からは徒歩{minutes}分ほどで、坂道が多いので歩きやすい靴がおすすめです。",
    "地元の人によると、{thing}は天気のよい日の午後がいちばんきれいだそうです。",
    "近くの店では{food}が人気で、週末には{minutes}分ほど並ぶこともあります。",
    "{month}月は気温の差が大きいため、薄手の上着を用意しておくと安心です。",
    "初めての方は、案内所で地図をもらってから回ると迷わずにすみます。",
    "写真を撮るときは、ほかの人の通行のじゃまにならないよう気をつけましょう。",
    "{place}の歴史は古く、{year}年ごろにはすでに多くの人が訪れていたといわれています。",
    "最近は{food}を使った新しいお菓子も登場し、若い人たちの間で話題になっています。",
    "混雑を避けたい場合は、平日の早い時間に訪れるのがよいでしょう。",
    "帰りには温泉に立ち寄って、歩き疲れた体をゆっくり休めるのもおすすめです。",
]
PLACES = ["京都", "奈良", "鎌倉", "金沢", "日光", "函館", "松本", "倉敷", "長崎", "高山", "仙台", "尾道"]
THINGS = ["紅葉", "桜", "庭園", "夜景", "古い町並み", "竹林", "湖", "花畑", "滝", "寺院"]
FOODS = ["抹茶", "栗", "柚子", "味噌", "豆腐", "そば", "団子", "和菓子"]
EN_WORDS = ("the of and to in is was for on that with as by at from his her an are this which be or had "
            "travel city museum station morning visitors guide weather price hotel river garden festival night "
            "market train ticket local food street autumn winter summer spring history famous view").split()
ZH_SENTENCES = ["每年秋天，很多游客来到这里欣赏红叶。", "建议在工作日的早上前往，以避开拥挤的人群。",
                "附近有很多地道的小吃，价格实惠。", "这座城市的历史非常悠久，值得细细品味。",
                "晚上的夜市十分热闹，可以品尝各种美食。", "交通方便，从车站步行十分钟即可到达。"]


FAMILY = 200  # pages per template in the ja-families mix: ~FAMILY^2 / 2 candidate pairs each


def _japanese(rng: random.Random) -> str:
    # Fixed sentences at most once per page, filled-in templates as often as drawn: real pages rarely repeat.
    fixed = rng.sample([t for t in JA_SENTENCES if "{" not in t], k=rng.randint(0, 4))
    filled = [rng.choice([t for t in JA_SENTENCES if "{" in t]).format(
        place=rng.choice(PLACES), thing=rng.choice(THINGS), food=rng.choice(FOODS), month=rng.randint(1, 12),
        hour=rng.randint(5, 9), minutes=rng.randint(3, 40), year=rng.randint(700, 1900))
        for _ in range(rng.randint(6, 40))]
    body = fixed + filled
    rng.shuffle(body)
    paragraphs = ["\n".join(body[i:i + 5]) for i in range(0, len(body), 5)]
    return f"{rng.choice(PLACES)}の{rng.choice(THINGS)}を楽しむ旅のガイド\n\n" + "\n\n".join(paragraphs)


def _english(rng: random.Random) -> str:
    return "\n".join(" ".join(rng.choices(EN_WORDS, k=rng.randint(12, 30))).capitalize() + "."
                     for _ in range(rng.randint(6, 30)))


def _chinese(rng: random.Random) -> str:
    return "\n".join("".join(rng.choices(ZH_SENTENCES, k=rng.randint(2, 5))) for _ in range(rng.randint(4, 12)))


def generate_pages(mix: str, records: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pages: list[str] = []
    # ja-families: every page a near copy of one of records / FAMILY templates, as boilerplate-heavy sites are.
    templates = [_japanese(rng) for _ in range(max(1, records // FAMILY))] if mix == "ja-families" else []
    for _ in range(records):
        if mix == "ja-only":
            roll = rng.random()
            if pages and roll < 0.05:
                pages.append(rng.choice(pages))  # exact copy
            elif pages and roll < 0.15:
                pages.append(_near_copy(rng, rng.choice(pages)))
            else:
                pages.append(_japanese(rng))
        elif mix == "ja-families":
            pages.append(_near_copy(rng, templates[len(pages) % len(templates)]))
        else:
            roll = rng.random()
            pages.append(_japanese(rng) if roll < 0.05 else _chinese(rng) if roll < 0.15 else _english(rng))
    return pages


def _near_copy(rng: random.Random, page: str) -> str:
    """The page with one line rewritten."""
    lines = page.split("\n")
    lines[rng.randrange(len(lines))] = rng.choice(JA_SENTENCES).format(
        place="札幌", thing="雪まつり", food="ラーメン", month=2, hour=7, minutes=5, year=1950)
    return "\n".join(lines)


def write_wet(pages: list[str], path: Path) -> int:
    """Write a gzip WET file (one gzip member per record, as Common Crawl does); returns the payload bytes."""
    payload_bytes = 0
    with path.open("wb") as handle:
        writer = WARCWriter(handle, gzip=True, warc_version="WARC/1.0")
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "bench_ingest"}))
        for index, text in enumerate(pages):
            payload = text.encode("utf-8")
            payload_bytes += len(payload)
            writer.write_record(writer.create_warc_record(
                f"https://bench.example/{index}", "conversion", payload=io.BytesIO(payload), length=len(payload),
                warc_content_type="text/plain"))
    return payload_bytes


def _stage_runner(stage: str) -> Callable[[Path], int]:
    quality = QualityFilter(QualityConfig())

    def run(path: Path) -> int:
        dedup = Deduplicator(DedupConfig())  # fresh per run: every repeat sees the same documents as new
        kept = 0
        with path.open("rb") as handle:
            for record in iter_wet_records(handle):
                if stage == "parse":
                    kept += 1
                    continue
                verdict = quality(record.text or "")
                if not verdict.kept:
                    continue
                if stage == "parse+quality+dedup" and dedup.check(verdict.text):
                    continue
                kept += 1
        return kept

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=3000, help="records per generated WET file")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per cell; the fastest is reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mix in ("cc-like", "ja-only"):
            path = Path(tmp) / f"{mix}.warc.wet.gz"
            payload = write_wet(generate_pages(mix, args.records, args.seed), path)
            compressed = path.stat().st_size
            for stage in ("parse", "parse+quality", "parse+quality+dedup"):
                runner = _stage_runner(stage)
                best, kept = float("inf"), 0
                for _ in range(args.repeat):
                    # CPU time of this process: the per-core cost, unaffected by other work on the machine
                    started = time.process_time()
                    kept = runner(path)
                    best = min(best, time.process_time() - started)
                rows.append((mix, stage, compressed, payload, args.records, kept, best))

    print("| mix | stage | file MB (gz) | text MB | records | kept | CPU s | MB/s gz | MB/s text | docs/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mix, stage, compressed, payload, records, kept, seconds in rows:
        print(f"| {mix} | {stage} | {compressed / 1e6:.2f} | {payload / 1e6:.2f} | {records} | {kept} | {seconds:.2f} "
              f"| {compressed / 1e6 / seconds:.2f} | {payload / 1e6 / seconds:.2f} | {records / seconds:,.0f} |")


if __name__ == "__main__":
    main()
