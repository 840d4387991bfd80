"""The built-in corpus: the build script is reproducible, splits are disjoint, the API yields documents."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from scratchlm.data import corpus
from scratchlm.data.corpus import corpus_path, corpus_stats, corpus_texts, iter_corpus, poems

ROOT = Path(__file__).resolve().parent.parent
FORTUNES = Path("/usr/share/games/fortunes")
DOCS = Path("/usr/share/doc")


def load_build_script():
    """Import scripts/build_corpus.py as a module (it is a standalone script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("build_corpus", ROOT / "scripts" / "build_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


build_corpus = load_build_script()

ESC = "\x1b"
FAKE_FORTUNES = (
    "A day without sunshine is like night.\n%\n"
    "\tIndented\twith tabs   \n\n\n\nand blank lines.\n\t\t-- Someone\n%\n"
    "Bold b\bbo\bol\bld and _\bu_\bn_\bd_\be_\br.\x07\n%\n"
    "A day without sunshine is like night.\n%\n"  # exact duplicate
    "\tAll\n\t  indented\n%\n"
    "%\n"  # empty record
)
FAKE_TANG = (
    f"{ESC}[32m《静夜思》{ESC}[m\n{ESC}[33m作者：李白{ESC}[m\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n%\n"
    f"{ESC}[32m《春晓》{ESC}[m\n{ESC}[33m作者：孟浩然{ESC}[m\n春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。\n"
)
FAKE_SONG = f"{ESC}[32m题目:《塞上》{ESC}[m\n{ESC}[33m作者:柳开（９４６－９９９）{ESC}[m\n鸣骹直上一千尺，天静无风声更干。\n"


@pytest.fixture
def fake_src(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny fortune folder (with colour codes, overstrike, tabs, a duplicate) and its copyright files."""
    src, docs = tmp_path / "fortunes", tmp_path / "doc"
    src.mkdir()
    (src / "fortunes").write_text(FAKE_FORTUNES, encoding="utf-8")
    (src / "tang300").write_text(FAKE_TANG, encoding="utf-8")
    (src / "song100").write_text(FAKE_SONG, encoding="utf-8")
    for pkg in build_corpus.PACKAGES:
        (docs / pkg).mkdir(parents=True)
        (docs / pkg / "copyright").write_text(f"{pkg}: licence GPL-test\n", encoding="utf-8")
    return src, docs


def read_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def build_fake(src: Path, docs: Path, out: Path) -> list[dict]:
    rc = build_corpus.main(["--src", str(src), "--doc-dir", str(docs), "--out", str(out), "--only", "fortunes,tang300,song100"])
    assert rc == 0
    return read_gz(out / "train.jsonl.gz") + read_gz(out / "validation.jsonl.gz")


def test_build_cleans_parses_and_dedups(fake_src, tmp_path):
    docs = build_fake(*fake_src, tmp_path / "out")
    texts = [d["text"] for d in docs]
    assert len(texts) == len(set(texts)) == 4 + 3  # 4 fortunes (one duplicate, one empty dropped) + 3 poems
    assert not any(ESC in t or "\x08" in t or "\x07" in t or "\t" in t for t in texts)
    assert "Bold bold and under." in texts
    assert "    Indented    with tabs\n\nand blank lines.\n        -- Someone" in texts  # ≤1 blank line
    assert "All\n  indented" in texts  # common indentation removed
    by_title = {d["title"]: d for d in docs if "title" in d}
    assert by_title["静夜思"]["author"] == "李白" and by_title["静夜思"]["dynasty"] == "唐"
    assert by_title["静夜思"]["text"].startswith("《静夜思》\n作者：李白\n床前明月光")  # pretraining sees title+author
    # song100's header layout ("题目:", lifespan) becomes the same as tang300's.
    assert by_title["塞上"]["author"] == "柳开"
    assert by_title["塞上"]["text"] == "《塞上》\n作者：柳开\n鸣骹直上一千尺，天静无风声更干。"
    assert {d["lang"] for d in docs if d["source"] == "fortunes"} == {"en"}
    assert {d["lang"] for d in docs if d["source"] in ("tang300", "song100")} == {"zh"}
    notice = (tmp_path / "out" / "NOTICE").read_text(encoding="utf-8")
    assert all(f"{pkg}: licence GPL-test" in notice for pkg in build_corpus.PACKAGES)


def test_build_is_byte_identical(fake_src, tmp_path):
    build_fake(*fake_src, tmp_path / "a")
    build_fake(*fake_src, tmp_path / "b")
    for name in ("train.jsonl.gz", "validation.jsonl.gz", "NOTICE"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_missing_source_file_is_a_clear_error(fake_src, tmp_path, capsys):
    src, docs = fake_src
    (src / "song100").unlink()
    assert build_corpus.main(["--src", str(src), "--doc-dir", str(docs), "--out", str(tmp_path / "o"), "--only", "song100"]) == 1
    err = capsys.readouterr().err
    assert "song100 is missing" in err and "apt-get install" in err


def test_bad_utf8_names_file_and_line(fake_src, tmp_path, capsys):
    src, docs = fake_src
    (src / "fortunes").write_bytes(b"fine\n%\nbad \xff byte\n")
    assert build_corpus.main(["--src", str(src), "--doc-dir", str(docs), "--out", str(tmp_path / "o"), "--only", "fortunes"]) == 1
    assert f"{src / 'fortunes'}:3: not valid UTF-8" in capsys.readouterr().err


@pytest.mark.skipif(not (FORTUNES / "tang300").is_file() or not (DOCS / "fortunes-zh").is_dir(),
                    reason="Debian fortune packages not installed")
def test_rebuild_from_debian_packages_matches_committed_files(tmp_path):
    """The committed corpus is exactly what the script builds from the installed packages."""
    assert build_corpus.main(["--out", str(tmp_path)]) == 0
    for name in ("train.jsonl.gz", "validation.jsonl.gz", "NOTICE"):
        assert (tmp_path / name).read_bytes() == (corpus.CORPUS_DIR / name).read_bytes(), name


def test_shipped_files_are_small_and_licensed():
    sizes = sum(corpus_path(s).stat().st_size for s in corpus.SPLITS)
    assert sizes < 4_000_000
    notice = (corpus.CORPUS_DIR / "NOTICE").read_text(encoding="utf-8")
    for pkg in ("fortunes", "fortunes-min", "fortunes-zh"):
        assert f"Package: {pkg}" in notice
    assert "GPL" in notice


def test_splits_do_not_overlap_and_hold_out_about_5_percent():
    train, val = set(corpus_texts("train")), set(corpus_texts("validation"))
    assert train and val and not (train & val)
    assert 0.03 < len(val) / (len(train) + len(val)) < 0.07
    # The split is a function of the text alone, so anyone can recompute which side a text is on.
    assert all(build_corpus.is_validation(t) for t in val)
    assert not any(build_corpus.is_validation(t) for t in list(train)[:2000])


def test_iter_corpus_yields_documents_with_fields():
    docs = list(iter_corpus("validation"))
    assert len(docs) == corpus_stats("validation")["docs"]
    for d in docs:
        assert isinstance(d["text"], str) and d["text"].strip("\n") == d["text"].rstrip() == d["text"] and d["text"].strip()
        assert d["lang"] in ("zh", "en") and isinstance(d["source"], str)
        assert "\x1b" not in d["text"]
    assert {d["lang"] for d in iter_corpus("validation", lang="zh")} == {"zh"}
    train_poems = poems("train")
    assert len(train_poems) > 300
    for p in train_poems:
        assert p["lang"] == "zh" and p["source"] in ("tang300", "song100")
        assert p["text"].startswith(f"《{p['title']}") and f"\n作者：{p['author']}\n" in p["text"]
    assert any(p["title"] == "春晓" and p["author"] == "孟浩然" for p in train_poems + poems("validation"))


def test_corpus_api_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown corpus split 'test'"):
        corpus_path("test")
    with pytest.raises(ValueError, match="unknown corpus lang"):
        next(iter_corpus("train", lang="fr"))
    monkeypatch.setattr(corpus, "CORPUS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="build_corpus.py"):
        corpus_path("train")
    with gzip.open(tmp_path / "train.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write('{"text": "ok", "lang": "en", "source": "x"}\n{"text": broken\n')
    with pytest.raises(ValueError, match=r"train\.jsonl\.gz:2: invalid JSON"):
        list(iter_corpus("train"))


def test_data_info_command(capsys):
    from scratchlm.cli import main

    assert main(["data", "info"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "validation" in out and "zh share" in out
    n_train = corpus_stats("train")["docs"]
    assert f"{n_train:,}" in out
