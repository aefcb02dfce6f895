"""MIXER's IWSLT14 preprocessing (rayseq.data.iwslt14) on a small archive with the real layout."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from rayseq.data import iwslt14
from rayseq.data.errors import DataError
from rayseq.data.iwslt14 import prepare_iwslt14

WORDS_51_EN = " ".join(["word"] * 50) + "."  # 51 tokens
WORDS_51_DE = " ".join(["wort"] * 50) + "."
WORDS_50_EN = " ".join(["word"] * 49) + "."
WORDS_50_DE = " ".join(["wort"] * 49) + "."

# (raw en, raw de, expected en, expected de); expected None = dropped by clean-corpus.
SPECIAL = [
    (
        "<title>Jane Doe: The \"Big\" Idea</title>",
        "<title>Jane Doe: Die \"große\" Idee</title>",
        "jane doe : the &quot; big &quot; idea",
        "jane doe : die &quot; große &quot; idee",
    ),
    (
        "<description>TED Talk Subtitles and Transcript: Jane's talk.</description>",
        "<description>TED Talk Untertitel und Transkript: Janes Vortrag.</description>",
        "ted talk subtitles and transcript : jane &apos;s talk .",
        "ted talk untertitel und transkript : janes vortrag .",
    ),
    (
        "It's what we're doing, isn't it?",
        "Wie geht's? Das ist, was wir tun.",
        "it &apos;s what we &apos;re doing , isn &apos;t it ?",
        "wie geht &apos; s ? das ist , was wir tun .",
    ),
    (
        "Pipes | and [brackets] & <more>.",
        "Rohre | und [Klammern] & <mehr>.",
        "pipes &#124; and &#91; brackets &#93; &amp; &lt; more &gt; .",
        "rohre &#124; und &#91; klammern &#93; &amp; &lt; mehr &gt; .",
    ),
    (WORDS_51_EN, WORDS_51_DE, None, None),  # 51 tokens: over the 50 limit
    (WORDS_50_EN, WORDS_50_DE, " ".join(["word"] * 49) + " .", " ".join(["wort"] * 49) + " ."),
    # 11 vs 7 tokens: ratio 1.57 > 1.5, dropped
    (
        "One two three four five six seven eight nine ten.",
        "Eins zwei drei vier fünf sechs.",
        None,
        None,
    ),
    # 6 vs 4 tokens: ratio exactly 1.5, kept
    ("Go one two three four.", "Eins zwei drei.", "go one two three four .", "eins zwei drei ."),
    ("", "", None, None),  # empty pair
    (
        "  Mr. Smith   went\tHOME.  ",
        "Herr Smith ging nach HAUSE.",
        "mr. smith went home .",
        "herr smith ging nach hause .",
    ),
]
N_PLAIN = 52


def _plain(i: int) -> tuple[str, str, str, str]:
    return (
        f"This is sentence number {i}.",
        f"Das ist Satz Nummer {i} hier.",
        f"this is sentence number {i} .",
        f"das ist satz nummer {i} hier .",
    )


def _talks() -> list[tuple[str, str, str | None, str | None]]:
    """The training body lines: the special cases first, then numbered plain sentences."""
    return SPECIAL + [_plain(i) for i in range(N_PLAIN)]


def _header(lang: str, talkid: int) -> list[str]:
    return [
        f"<url>http://www.ted.com/talks/lang/{lang}/talk_{talkid}.html</url>",
        f"<keywords>talks, science, {lang}</keywords>",
        f"<talkid>{talkid}</talkid>",
    ]


def _train_tags(lang: str, extra_line: bool = False) -> str:
    idx = 0 if lang == "en" else 1
    body = [row[idx] for row in _talks()]
    lines = _header(lang, 1) + body[:30] + _header(lang, 2) + body[30:]
    if extra_line:
        lines.append("One line too many.")
    return "\n".join(lines) + "\n"


TEST_SEGS = {
    # set: list of (en seg, de seg)
    "IWSLT14.TED.dev2010": [
        ("It’s dev2010 line 1.", "Das ist’s, dev2010 Zeile eins."),
        ("Dev2010 line 2.", "Dev2010 Zeile zwei."),
    ],
    "IWSLT14.TEDX.dev2012": [("Dev2012 line 1.", "Dev2012 Zeile eins.")],
    "IWSLT14.TED.tst2010": [(WORDS_51_EN, WORDS_51_DE)],  # test is not length filtered
    "IWSLT14.TED.tst2011": [
        ("Tst2011 line 1.", "Tst2011 Zeile eins."),
        ("Tst2011 line 2.", "Tst2011 Zeile zwei."),
    ],
    "IWSLT14.TED.tst2012": [("Tst2012 \"line\" 1.", "Tst2012 \"Zeile\" eins.")],
}
EXPECTED_TEST_EN = [
    "it &apos;s dev2010 line 1 .",
    "dev2010 line 2 .",
    "dev2012 line 1 .",
    " ".join(["word"] * 50) + " .",
    "tst2011 line 1 .",
    "tst2011 line 2 .",
    "tst2012 &quot; line &quot; 1 .",
]
EXPECTED_TEST_DE = [
    "das ist &apos; s , dev2010 zeile eins .",
    "dev2010 zeile zwei .",
    "dev2012 zeile eins .",
    " ".join(["wort"] * 50) + " .",
    "tst2011 zeile eins .",
    "tst2011 zeile zwei .",
    "tst2012 &quot; zeile &quot; eins .",
]


def _xml(name: str, lang: str) -> str:
    idx = 0 if lang == "en" else 1
    segs = "\n".join(
        f'<seg id="{i}"> {pair[idx]} </seg>' for i, pair in enumerate(TEST_SEGS[name], 1)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<mteval>\n'
        f'<refset setid="{name}" srclang="german" trglang="english" refid="ref">\n'
        '<doc docid="1" genre="lectures">\n<url>http://www.ted.com/talks/x.html</url>\n'
        "<keywords>talks</keywords>\n<talkid>1</talkid>\n<title>Some title</title>\n"
        f"{segs}\n</doc>\n</refset>\n</mteval>\n"
    )


def _members() -> dict[str, bytes]:
    """Archive members by base name (stored under ``de-en/``), plus files to ignore."""
    files: dict[str, bytes] = {
        "README": b"IWSLT 2014 de-en\n",
        "IWSLT14.TED.dev2010.de-en.de.txt": b"ignored\n",
    }
    for name in reversed(list(TEST_SEGS)):  # archive order must not matter
        for lang in ("de", "en"):
            files[f"{name}.de-en.{lang}.xml"] = _xml(name, lang).encode()
    files["train.tags.de-en.de"] = _train_tags("de").encode()
    files["train.tags.de-en.en"] = _train_tags("en").encode()
    return files


def _archive(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"de-en/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def _expected_clean() -> list[tuple[str, str]]:
    return [(en, de) for _, _, en, de in _talks() if en is not None and de is not None]


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return _archive(tmp_path / "de-en.tgz", _members())


def test_prepare_matches_hand_checked_output(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "prep"
    counts = prepare_iwslt14(archive, out, progress=False, workers=2)

    clean = _expected_clean()
    assert len(clean) == 59  # 62 body lines minus long, ratio and empty
    valid_rows = [clean[22], clean[45]]  # NR % 23 == 0 (1-based)
    train_rows = [row for nr, row in enumerate(clean, 1) if nr not in (23, 46)]
    assert counts == {"train": 57, "valid": 2, "test": 7}

    assert _read(out / "train.de-en.en") == [en for en, _ in train_rows]
    assert _read(out / "train.de-en.de") == [de for _, de in train_rows]
    assert _read(out / "valid.de-en.en") == [en for en, _ in valid_rows]
    assert _read(out / "valid.de-en.de") == [de for _, de in valid_rows]
    assert _read(out / "test.de-en.en") == EXPECTED_TEST_EN
    assert _read(out / "test.de-en.de") == EXPECTED_TEST_DE

    train_en = _read(out / "train.de-en.en")
    # Tag lines dropped, title/description text kept, escapes, lowercasing.
    assert train_en[:4] == [
        "jane doe : the &quot; big &quot; idea",
        "ted talk subtitles and transcript : jane &apos;s talk .",
        "it &apos;s what we &apos;re doing , isn &apos;t it ?",
        "pipes &#124; and &#91; brackets &#93; &amp; &lt; more &gt; .",
    ]
    assert not any("url" in line or "talkid" in line or "keywords" in line for line in train_en)
    assert all(line == line.lower() for line in train_en)
    # Length and ratio filter: 51 tokens and ratio 11/7 dropped, 50 tokens and ratio 6/4 kept.
    assert max(len(line.split()) for line in train_en) == 50
    assert "go one two three four ." in train_en
    assert not any(line.startswith("one two three") for line in train_en)
    assert valid_rows == [_plain(15)[2:], _plain(38)[2:]]  # 7 special lines kept first
    for split in ("train", "valid", "test"):
        assert len(_read(out / f"{split}.de-en.de")) == len(_read(out / f"{split}.de-en.en"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["de-en.tgz", "prep"]  # no temp left


def test_extracted_directory_gives_same_output(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    prepare_iwslt14(archive, tmp_path / "a", progress=False, workers=1)
    assert capsys.readouterr().err == ""
    prepare_iwslt14(tmp_path / "x", tmp_path / "b", progress=True, workers=1)
    assert "tokenizing" in capsys.readouterr().err  # the tqdm bar goes to stderr
    for name in iwslt14.output_names():
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_missing_member_is_named(tmp_path: Path) -> None:
    files = _members()
    del files["IWSLT14.TED.tst2011.de-en.en.xml"]
    path = _archive(tmp_path / "de-en.tgz", files)
    missing = r"IWSLT14\.TED\.tst2011\.de-en\.en\.xml is missing"
    with pytest.raises(DataError, match=missing) as e:
        prepare_iwslt14(path, tmp_path / "prep", progress=False, workers=1)
    assert "de-en/train.tags.de-en.de" in str(e.value)  # lists what was found
    assert not (tmp_path / "prep").exists()


def test_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        prepare_iwslt14(tmp_path / "nope.tgz", tmp_path / "prep", progress=False)


def test_not_an_archive(tmp_path: Path) -> None:
    bad = tmp_path / "de-en.tgz"
    bad.write_bytes(b"<html>404</html>")
    with pytest.raises(DataError, match="cannot be read"):
        prepare_iwslt14(bad, tmp_path / "prep", progress=False)


def test_train_line_count_mismatch_names_both_files(tmp_path: Path) -> None:
    files = _members()
    files["train.tags.de-en.en"] = _train_tags("en", extra_line=True).encode()
    path = _archive(tmp_path / "de-en.tgz", files)
    with pytest.raises(DataError) as e:
        prepare_iwslt14(path, tmp_path / "prep", progress=False, workers=1)
    msg = str(e.value)
    assert "train.tags.de-en.de has 62 lines" in msg
    assert "train.tags.de-en.en has 63" in msg
    assert not (tmp_path / "prep").exists()


def test_non_utf8_names_file_and_line(tmp_path: Path) -> None:
    files = _members()
    lines = files["IWSLT14.TED.tst2010.de-en.de.xml"].split(b"\n")
    lines[2] = b"<refset \xff>"
    files["IWSLT14.TED.tst2010.de-en.de.xml"] = b"\n".join(lines)
    path = _archive(tmp_path / "de-en.tgz", files)
    bad_line = r"IWSLT14\.TED\.tst2010\.de-en\.de\.xml:3: not valid UTF-8"
    with pytest.raises(DataError, match=bad_line):
        prepare_iwslt14(path, tmp_path / "prep", progress=False, workers=1)
    assert not (tmp_path / "prep").exists()


def test_existing_outputs_need_overwrite(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "prep"
    out.mkdir()
    (out / "valid.de-en.en").write_text("old\n", encoding="utf-8")
    with pytest.raises(DataError, match="overwrite=True"):
        prepare_iwslt14(archive, out, progress=False, workers=1)
    assert sorted(p.name for p in out.iterdir()) == ["valid.de-en.en"]
    assert (out / "valid.de-en.en").read_text(encoding="utf-8") == "old\n"

    counts = prepare_iwslt14(archive, out, progress=False, workers=1, overwrite=True)
    assert counts["valid"] == 2
    assert len(_read(out / "valid.de-en.en")) == 2


def test_failure_while_moving_leaves_no_outputs(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = iwslt14.os.replace
    calls = []

    def flaky_replace(src: Path, dst: Path) -> None:
        calls.append(dst)
        if len(calls) == 3:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(iwslt14.os, "replace", flaky_replace)
    out = tmp_path / "prep"
    with pytest.raises(OSError, match="disk full"):
        prepare_iwslt14(archive, out, progress=False, workers=1)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["de-en.tgz"]  # temp folder removed


def test_clean_pair_semantics() -> None:
    assert iwslt14.clean_pair(" a  b\tc ", "x y") == ("a b c", "x y")
    assert iwslt14.clean_pair("a b c d", "x y") is None  # ratio 2
    assert iwslt14.clean_pair("a", "") is None
    assert iwslt14.clean_pair("a|b", "x") == ("ab", "x")


def test_split_valid_takes_every_23rd_line() -> None:
    lines = [str(i) for i in range(1, 50)]
    train, valid = iwslt14.split_valid(lines)
    assert valid == ["23", "46"]
    assert len(train) == 47 and "23" not in train
