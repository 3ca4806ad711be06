"""A small fake Common Crawl crawl, laid out exactly like the real one, with the pages the ingest must sort.

    crawl-data/CC-MAIN-2024-10/wet.paths.gz
    crawl-data/CC-MAIN-2024-10/segments/1707947473347.0/wet/CC-MAIN-20240220211055-20240221001055-0000N.warc.wet.gz

File 00000 and 00001 are healthy; 00002 is cut off in the middle of its last (large) record; 00003 is not
gzip at all; 00004 is listed in wet.paths.gz but missing from the bucket. Each page's URL says what it is;
``KEPT_URLS`` and the expected drop counts in the tests follow from the page list below.
"""

from __future__ import annotations

import gzip
import io
import random
from dataclasses import dataclass

from warcio.warcwriter import WARCWriter

CRAWL_ID = "CC-MAIN-2024-10"
SEGMENT = "crawl-data/CC-MAIN-2024-10/segments/1707947473347.0/wet"


def wet_key(index: int) -> str:
    return f"{SEGMENT}/CC-MAIN-20240220211055-20240221001055-{index:05d}.warc.wet.gz"


@dataclass(frozen=True)
class Page:
    url: str
    text: str
    language: str  # the CLD2 tag Common Crawl would put in WARC-Identified-Content-Language


# ---- Japanese pages that must be kept -------------------------------------------------------------------

KYOTO = """秋の京都で紅葉を楽しむための散策ガイド
京都の紅葉は例年十一月中旬から十二月上旬にかけて見頃を迎えます。山に近い寺院ほど色づきが早く、市街地の庭園はそれより一週間ほど遅れるのが一般的です。
東山エリアでは、永観堂や南禅寺を結ぶ道が人気です。朝8時前に歩き始めると観光客が少なく、池に映る紅葉を落ち着いて眺めることができます。
嵐山まで足を延ばすなら、電車で嵯峨嵐山駅に向かい、竹林の小径を抜けて常寂光寺を訪ねる順路がおすすめです。坂道が多いので、歩きやすい靴を選んでください。
夜間のライトアップを行う寺院もあります。日没後は気温が急に下がるため、薄手のダウンや手袋を用意しておくと安心です。"""

MISO = """毎日飲みたい、基本の味噌汁の作り方
味噌汁の味を決めるのは、だしと味噌を入れるタイミングです。昆布と鰹節で取っただしは香りがよく、具材の甘みを引き立ててくれます。
まず鍋に水と昆布を入れて三十分ほど置き、弱火にかけます。沸騰する直前に昆布を取り出し、鰹節を加えて二分ほど煮たら火を止めて、こし器でこします。
豆腐やわかめのように火が通りやすい具は最後に入れ、大根や玉ねぎは先にだしで柔らかくなるまで煮ておきます。
味噌は火を止めてから溶き入れましょう。煮立たせると香りが飛んでしまうので、温め直すときも沸騰させないのがこつです。"""

SLEEP = """眠りの質を高めるために今夜からできること
寝つきが悪い、夜中に何度も目が覚めるといった悩みは、生活習慣を少し見直すだけで改善することがあります。
まず、起きる時刻を毎日そろえることが大切です。休日に遅くまで寝ていると体内時計がずれ、月曜日の朝がつらくなります。
寝る前の一時間はスマートフォンやパソコンの画面を見る時間を減らし、部屋の明かりも暖色の控えめなものに切り替えてみてください。
カフェインは摂取してから数時間は覚醒作用が続くため、コーヒーや緑茶は午後三時までにしておくと安心です。
それでも眠れない日が続く場合は、我慢せずに医療機関に相談しましょう。"""

LIBRARY = """市立図書館の新しいサービスについて
市立中央図書館では、来月から電子書籍の貸し出しを始めます。図書館の利用カードを持っている方なら、自宅のパソコンやスマートフォンから一度に三冊まで借りることができます。
貸出期間は二週間で、期限が来ると自動的に返却されるため、延滞の心配はありません。
また、土曜日の午後には小学生を対象にした読み聞かせの会を開いています。絵本だけでなく、昔話や科学の本も取り上げる予定です。
館内の学習室は改装工事のため、今月末まで利用できません。ご不便をおかけしますが、ご理解のほどよろしくお願いいたします。"""

BOUSAI = """家庭でできる地震への備え
大きな地震はいつ起きるかわかりません。日ごろから家族で話し合い、必要な備えを確認しておくことが大切です。
まず、家具の転倒を防ぐために、背の高い棚は金具で壁に固定しましょう。寝室にはできるだけ物を置かず、枕元に靴と懐中電灯を用意しておくと、夜間の揺れにも対応できます。
飲料水は一人一日三リットルを目安に、少なくとも三日分を備蓄してください。食料は普段から少し多めに買い、古いものから順に使う方法が続けやすいでしょう。
避難場所や家族との連絡方法も、紙に書いて冷蔵庫などに貼っておくと安心です。"""

PROGRAMMING = """プログラミングを独学で続けるためのコツ
プログラミングの学習は、最初の一か月で挫折してしまう人が少なくありません。続けるためには、小さな目標を立てて達成感を積み重ねることが効果的です。
たとえば「Pythonで家計簿を集計するスクリプトを書く」のように、自分の生活に役立つテーマを選ぶと、学ぶ理由がはっきりします。
エラーが出たときは、メッセージをそのまま検索する前に、どの行で何が起きたのかを声に出して説明してみてください。それだけで原因に気づくことがよくあります。
学んだ内容は短いメモでもよいので記録に残し、一週間後に読み返す習慣をつけましょう。"""

RAILWAY = """日本の鉄道が時間に正確な理由
日本の鉄道は、列車が数十秒遅れただけでも車内放送でおわびをするほど、時刻の正確さで知られています。
その背景には、秒単位で作られた運行計画と、駅ごとに細かく決められた停車時間があります。運転士は腕時計と運転台の時刻表を見比べながら、区間ごとの到着時刻を確認しています。
利用者の側も、整列乗車や降りる人を先に通すといった習慣によって、乗り降りにかかる時間を短くすることに協力しています。
一方で、ダイヤが過密なために、一つの遅れが路線全体に広がりやすいという課題も指摘されています。"""

GARDEN = """ベランダで始める家庭菜園
日当たりのよいベランダがあれば、プランターひとつで野菜づくりを始められます。初心者には、ミニトマトやバジル、ラディッシュのように育てやすい品種が向いています。
土は市販の野菜用培養土を使うと手軽です。プランターの底に鉢底石を敷き、水はけをよくしておくと根腐れを防げます。
水やりは土の表面が乾いてから、鉢底から流れ出るくらいたっぷりと与えます。真夏は朝と夕方の二回に分け、日中の暑い時間帯は避けてください。
収穫したばかりの野菜は香りが強く、料理がいつもより楽しくなります。"""

# Site chrome around the Kyoto article: removed line by line, the article itself is kept.
KYOTO_CHROME_TOP = """ホーム
当サイトではCookieを使用しています。"""
KYOTO_CHROME_BOTTOM = "Copyright © 2024 京都さんぽ All Rights Reserved."

# ---- pages that must be dropped, one reason each --------------------------------------------------------

ZH_HANS = """北京秋季旅游指南
每年十月是北京最舒适的季节，天气晴朗，气温适中，非常适合外出游玩。
香山的红叶是秋天最受欢迎的景点之一，建议游客在工作日的早上前往，以避开拥挤的人群。
颐和园和故宫也值得一去。很多游客会在附近的胡同里品尝地道的北京小吃，比如炸酱面和豆汁。
此外，一些日本游客喜欢称这里为「北京の秋」，但当地人更习惯说“金秋”。"""

ZH_HANT = """台北夜市美食推薦
士林夜市是台北規模最大的夜市之一，每到晚上都擠滿了觀光客與在地居民。
必吃的小吃包括大雞排、蚵仔煎和珍珠奶茶，價格實惠，份量也十分充足。
如果想避開人潮，建議在平日晚上七點以前抵達，並搭乘捷運前往，以免找不到停車位。
逛完夜市之後，也可以到附近的士林官邸散步，欣賞夜晚安靜的庭園景色。"""

ENGLISH = """A First-Timer's Guide to Getting Around Tokyo
Tokyo's rail network looks intimidating on a map, but it is one of the easiest systems in the world to use.
Buy a rechargeable IC card such as Suica or Pasmo at any station; it works on trains, buses and even in
convenience stores, so you never have to work out individual fares.
Avoid the morning rush between eight and nine o'clock if you can, and remember that most lines stop running
shortly after midnight. Station staff are used to helping visitors, so do not hesitate to ask."""

SHOP_CHROME = """ホーム
メニュー
ログイン
新規登録
お問い合わせ
サイトマップ
プライバシーポリシー
利用規約
当店の営業時間は午前十時から午後七時までです。定休日は毎週水曜日となっております。
ページの先頭へ
Copyright © 2024 Example Shop All Rights Reserved."""

REPEATED_LINES = "\n".join(
    ["本日のおすすめ商品はこちらです。"] * 8
    + ["新商品の入荷情報は毎週金曜日に更新しています。季節の野菜や果物を中心に、産地から直接仕入れた品をご用意しています。",
       "ご来店の際は、入口の案内板もあわせてご覧ください。"])

SHORT_NOTICE = "年末年始の営業についてのお知らせです。十二月二十九日から一月三日まで休業いたします。"

PRICE_LIST = """2024年度 料金表
基本 月額1,980円（税込2,178円） 通信量3GB
標準 月額3,980円（税込4,378円） 通信量20GB
大容量 月額5,980円（税込6,578円） 通信量50GB
家族割 2回線目から月額550円引き（最大4回線）
学割 22歳以下は最初の12か月間1,100円引き
初期費用 3,300円 SIMカード発行料 440円
端末分割 24回 月々1,650円から 頭金0円
解約金 0円 契約期間の縛りなし 2024年4月1日改定
お支払い方法はクレジットカードと口座振替からお選びいただけます。"""

SYMBOL_RANKING = """★☆★ 今週の人気ランキング ★☆★
■第一位■ ふわふわパンケーキ ♪♪♪ ★★★★★
■第二位■ 濃厚チーズケーキ ♪♪ ★★★★☆
■第三位■ 季節のフルーツタルト ♪ ★★★★☆
▼▼ ここからは番外編 ▼▼
◆抹茶ロールケーキ◆ →→ 詳しくはこちら ←←
◆焼きたてクロワッサン◆ →→ 詳しくはこちら ←←
◆栗のモンブラン◆ →→ 秋限定 ←← ★★★
◆苺のショートケーキ◆ →→ 定番 ←← ★★★★
◇◇ 店舗限定メニュー ◇◇ ♪ ☆ ♪ ☆ ♪
※価格は店舗によって異なる場合があります。ご了承ください。"""

NEWS_INDEX = """新着記事一覧
政府は来年度の予算案について、子育て支援の拡充を柱とする方針を…
大型の台風が週末にかけて九州に接近するおそれがあり、気象庁は…
人気アニメの劇場版が公開初日に観客動員数の記録を更新し、配給会社は…
県内の公立高校で、来春から制服の選択制を導入する動きが広がり…
地元の商店街が空き店舗を活用した子ども食堂を開設し、ボランティアを…
新しい観光列車の運行が始まり、沿線の自治体では歓迎イベントが開かれました。"""

KEYWORD_LIST = """東京 ランチ おすすめ 駅近 個室あり
新宿 カフェ 電源 ソファ席 深夜営業
渋谷 居酒屋 飲み放題 安い 予約可能
池袋 ラーメン 人気店 行列 つけ麺
銀座 寿司 カウンター 記念日 コース料理
浅草 天ぷら 老舗 観光客向け 食べ歩き
上野 とんかつ 定食 ボリューム たっぷり
品川 焼肉 会社帰り 宴会 団体利用
恵比寿 ワインバー 落ち着いた雰囲気 デート向き
吉祥寺 パン屋 朝食 テイクアウト 公園"""

SEO_SPAM = """格安スマホ比較ランキング
格安スマホを選ぶなら格安スマホ比較ナビ。格安スマホの料金、格安スマホの通信速度、格安スマホのサポートを徹底比較。
格安スマホに乗り換えるなら今。格安スマホのキャンペーン情報、格安スマホのおすすめ機種もまとめて紹介します。
格安スマホで通信費を節約しよう。格安スマホの申し込み方法や格安スマホの注意点もわかりやすく解説します。
格安スマホの口コミ、格安スマホの評判、格安スマホのデメリットも正直にお伝えします。格安スマホなら当サイトへ。"""

# The Kyoto article copied by another site: full-width digits, other chrome, other line ends -> exact copy.
KYOTO_MIRROR = ("メニュー\n" + KYOTO.replace("8時", "８時").replace("。\n", "。  \n") + "\n無断転載を禁じます")
# The Kyoto article re-published with a new title line and one changed detail -> near copy.
KYOTO_NEAR = KYOTO.replace("秋の京都で紅葉を楽しむための散策ガイド", "【2024年版】秋の京都で紅葉を楽しむための散策ガイド") \
                  .replace("朝8時前に", "朝7時前に")


def _big_cat_article() -> str:
    """About 150 KB of varied Japanese (seeded), so the cut in file 00002 lands far inside this one record."""
    rng = random.Random(7)
    subjects = ["子猫", "成猫", "高齢の猫", "保護猫", "室内飼いの猫"]
    topics = ["ごはんの量", "爪とぎの場所", "トイレの砂", "遊びの時間", "ブラッシング", "健康診断", "水の飲ませ方"]
    advice = ["は少しずつ慣らしていくのが基本です。", "は季節によって見直すとよいでしょう。",
              "は獣医師に相談しながら決めると安心です。", "は毎日同じ時間にそろえると落ち着きます。"]
    lines = ["猫と暮らすための基本ガイド"]
    for number in range(1, 1800):
        lines.append(f"第{number}項：{rng.choice(subjects)}の{rng.choice(topics)}{rng.choice(advice)}")
    return "\n".join(lines)


FILE_0 = [
    Page("https://kyoto-sanpo.example.jp/autumn-leaves", f"{KYOTO_CHROME_TOP}\n{KYOTO}\n{KYOTO_CHROME_BOTTOM}", "jpn"),
    Page("https://travel.example.cn/beijing-autumn", ZH_HANS, "zho"),
    Page("https://tokyo-guide.example.com/getting-around", ENGLISH, "eng"),
    Page("https://cooking.example.jp/miso-soup", MISO, "jpn"),
    Page("https://shop.example.jp/hours", SHOP_CHROME, "jpn"),
    Page("https://mirror.example.net/kyoto-autumn-copy", KYOTO_MIRROR, "jpn"),
    Page("https://shop.example.jp/today", REPEATED_LINES, "jpn"),
    Page("https://shop.example.jp/notice", SHORT_NOTICE, "jpn"),
    Page("https://health.example.jp/sleep", SLEEP, "jpn"),
]
FILE_1 = [
    Page("https://matome.example.jp/kyoto-2024", KYOTO_NEAR, "jpn"),
    Page("https://travel.example.tw/taipei-night-market", ZH_HANT, "zho"),
    Page("https://mobile.example.jp/prices", PRICE_LIST, "jpn"),
    Page("https://sweets.example.jp/ranking", SYMBOL_RANKING, "jpn"),
    Page("https://news.example.jp/latest", NEWS_INDEX, "jpn"),
    Page("https://city.example.lg.jp/library/news", LIBRARY, "jpn"),
    Page("https://gourmet.example.jp/tags", KEYWORD_LIST, "jpn"),
    Page("https://sumaho.example.jp/ranking", SEO_SPAM, "jpn"),
    Page("https://empty.example.jp/", "", "jpn"),
    Page("https://bousai.example.jp/jishin", BOUSAI, "jpn"),
    Page("https://dev.example.jp/self-study", PROGRAMMING, "jpn"),
]
FILE_2 = [
    Page("https://tetsudo.example.jp/punctuality", RAILWAY, "jpn"),
    Page("https://garden.example.jp/veranda", GARDEN, "jpn"),
    Page("https://neko.example.jp/guide", _big_cat_article(), "jpn"),
]

# In output order: sources are read file by file, record by record.
KEPT_URLS = [
    "https://kyoto-sanpo.example.jp/autumn-leaves",
    "https://cooking.example.jp/miso-soup",
    "https://health.example.jp/sleep",
    "https://city.example.lg.jp/library/news",
    "https://bousai.example.jp/jishin",
    "https://dev.example.jp/self-study",
    "https://tetsudo.example.jp/punctuality",
    "https://garden.example.jp/veranda",
]


def build_wet(pages: list[Page], filename: str) -> bytes:
    """A gzip WET file as Common Crawl writes them: a warcinfo record, then one conversion record per page."""
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True, warc_version="WARC/1.0")
    writer.write_record(writer.create_warcinfo_record(filename, {
        "Software-Info": "neuroq-fake-crawl", "Extracted-Date": "Tue, 20 Feb 2024 21:10:55 GMT",
        "robots": "checked via crawler-commons", "isPartOf": CRAWL_ID,
        "operator": "Common Crawl Admin (info@commoncrawl.org)",
        "description": "Wide crawl of the web for February/March 2024", "publisher": "Common Crawl"}))
    for page in pages:
        payload = page.text.encode("utf-8")
        writer.write_record(writer.create_warc_record(
            page.url, "conversion", payload=io.BytesIO(payload), length=len(payload),
            warc_content_type="text/plain",
            warc_headers_dict={"WARC-Identified-Content-Language": page.language,
                               "WARC-Date": "2024-02-21T00:10:55Z"}))
    return buffer.getvalue()


def truncated(data: bytes, pages_before: list[Page], filename: str) -> bytes:
    """``data`` cut in the middle of its last record's gzip member (the records before it stay whole)."""
    intact = len(build_wet(pages_before, filename))
    return data[: intact + (len(data) - intact) // 2]


# A second crawl with one large WET file of poorly compressible text, to see that reading stops early.
LARGE_CRAWL_ID = "CC-MAIN-2024-18"
LARGE_WET_KEY = "crawl-data/CC-MAIN-2024-18/segments/1712296815919.75/wet/CC-MAIN-20240412101354-00000.warc.wet.gz"


def _large_wet() -> bytes:
    rng = random.Random(18)
    alphabet = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん日本語文章"
    pages = [Page(f"https://large.example.jp/{n}", "".join(rng.choices(alphabet, k=60_000)), "jpn") for n in range(20)]
    return build_wet(pages, LARGE_WET_KEY)


def crawl_objects() -> dict[str, bytes]:
    """Every object of the fake crawls, key -> bytes, ready to upload to bucket ``commoncrawl``."""
    objects = {wet_key(0): build_wet(FILE_0, wet_key(0)), wet_key(1): build_wet(FILE_1, wet_key(1))}
    whole = build_wet(FILE_2, wet_key(2))
    objects[wet_key(2)] = truncated(whole, FILE_2[:-1], wet_key(2))
    objects[wet_key(3)] = random.Random(3).randbytes(4096)
    paths = "".join(f"{wet_key(index)}\n" for index in range(5))  # 00004 is listed but never uploaded
    objects[f"crawl-data/{CRAWL_ID}/wet.paths.gz"] = gzip.compress(paths.encode("ascii"), mtime=0)
    objects[LARGE_WET_KEY] = _large_wet()
    objects[f"crawl-data/{LARGE_CRAWL_ID}/wet.paths.gz"] = gzip.compress(f"{LARGE_WET_KEY}\n".encode("ascii"), mtime=0)
    return objects


# A wider crawl for the sharded ingest: 10 WET files, so 4 shards get windows of 3, 3, 2 and 2 files, with exact
# and near copies of one shard's pages in the others, plus a truncated, a corrupt and a missing file.
WIDE_CRAWL_ID = "CC-MAIN-2024-22"
WIDE_SEGMENT = "crawl-data/CC-MAIN-2024-22/segments/1715971057216.39/wet"


def wide_wet_key(index: int) -> str:
    return f"{WIDE_SEGMENT}/CC-MAIN-20240517-{index:05d}.warc.wet.gz"


def near_copy(text: str) -> str:
    """The page re-published with a new title prefix and one changed word: a near duplicate, not an exact one."""
    title, body = text.split("\n", 1)
    return f"【保存版】{title}\n" + body.replace("です。", "でした。", 1)


WIDE_FILES: dict[int, list[Page]] = {
    0: FILE_0,  # shard 0; its Kyoto mirror is an exact copy within the shard
    2: [Page("https://city.example.lg.jp/library/news", LIBRARY, "jpn")],
    3: FILE_1,  # shard 1: the Kyoto near copy (of shard 0) and the library page again (exact, of shard 0)
    5: FILE_2,  # truncated, like 00002 of the small crawl
    6: [Page("https://copy.example.com/kyoto-2024", KYOTO_NEAR.replace("\n", "\n "), "jpn"),  # shard 2
        Page("https://matome.example.jp/sleep", near_copy(SLEEP), "jpn"),
        Page("https://copy.example.com/miso", MISO, "jpn")],
    7: [Page("https://copy.example.com/railway", RAILWAY, "jpn")],
    8: [Page("https://matome.example.jp/garden", near_copy(GARDEN), "jpn")],  # shard 3
    9: [Page("https://copy.example.com/kyoto", KYOTO, "jpn"),
        Page("https://matome.example.jp/bousai", near_copy(BOUSAI), "jpn")],
}
WIDE_CORRUPT, WIDE_MISSING = 1, 4


def wide_crawl_objects() -> dict[str, bytes]:
    """Every object of the wide crawl, key -> bytes, ready to upload to bucket ``commoncrawl``."""
    objects = {wide_wet_key(i): build_wet(pages, wide_wet_key(i)) for i, pages in WIDE_FILES.items()}
    objects[wide_wet_key(5)] = truncated(objects[wide_wet_key(5)], FILE_2[:-1], wide_wet_key(5))
    objects[wide_wet_key(WIDE_CORRUPT)] = random.Random(1).randbytes(4096)
    paths = "".join(f"{wide_wet_key(index)}\n" for index in range(10))  # WIDE_MISSING is never uploaded
    objects[f"crawl-data/{WIDE_CRAWL_ID}/wet.paths.gz"] = gzip.compress(paths.encode("ascii"), mtime=0)
    return objects
