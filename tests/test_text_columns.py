"""Text columns: stored as ASCII bytes where they are ASCII, read back as the same str."""

from __future__ import annotations

import shutil
from pathlib import Path

import asdf
import numpy as np
import yaml
from conftest import LAMOST_FILES, REPO, SDSS_FILES

from gasnet_plugin.api import as_config
from gasnet_plugin.host.batch_outputs import merge_results
from gasnet_plugin.host.runner import Pipeline
from gasnet_plugin.io.archive import read_archive
from gasnet_plugin.io.text_columns import (
    as_text,
    as_unicode,
    ascii_or_unicode,
    compact_text_columns,
    text_columns_as_str,
)


def stored_datatypes(path: Path) -> dict[str, object]:
    """Column name → the ASDF ``datatype`` the archive's file records for it."""
    with asdf.open(path, _force_raw_types=True, lazy_load=True, memmap=False) as af:
        return {str(c["name"]): c["data"]["datatype"] for c in af.tree["results"]["columns"]}


def config(tmp_path: Path):
    """The default pipeline, one spectrum per batch and per shard (shards whose text
    columns differ meet in the archive's spools), streamed to the archive."""
    raw = yaml.safe_load((REPO / "example_configs" / "default.yaml").read_text())
    raw.update({"batch_size": 1, "shard_size": 1, "progress": False})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return as_config(path)


def test_ascii_text_becomes_bytes_of_the_same_width_and_comes_back_exactly():
    text = np.array([["QSO", ""], ["GALAXY", "STAR"]])           # 2-D, as CAND_SPECTYPE
    stored = ascii_or_unicode(text)
    assert stored.dtype == np.dtype("S6")
    assert np.array_equal(as_unicode(stored), text) and as_unicode(stored).dtype == text.dtype
    assert as_text(stored[1, 0]) == "GALAXY" and as_text("QSO") == "QSO"
    wide = np.array(["x" * 300, "é"])                             # one non-ASCII value
    assert ascii_or_unicode(wide) is wide
    numbers = np.arange(3.0)
    assert ascii_or_unicode(numbers) is numbers and as_unicode(numbers) is numbers


def test_tables_keep_descriptions_units_and_order_through_both_conversions():
    from astropy.table import MaskedColumn, Table

    table = Table({"SPECTYPE": np.array(["QSO", "STAR"]), "Z": np.array([1.5, 0.0]),
                   "SOURCE": np.array(["/data/a.fits", "/données/b.fits"])})
    table["SPECTYPE"].description = "class"
    table["Z"].unit = "1"
    compact_text_columns(table)
    assert table.colnames == ["SPECTYPE", "Z", "SOURCE"]
    assert table["SPECTYPE"].dtype.kind == "S" and table["SPECTYPE"].description == "class"
    assert table["SOURCE"].dtype.kind == "U"                       # not ASCII: kept
    # parts that differ (one batch had a non-ASCII path) stack to UCS-4, exactly
    mixed = merge_results([compact_text_columns(Table({"SOURCE": np.array(["/data/a"])})),
                           compact_text_columns(Table({"SOURCE": np.array(["/données/b"])}))])
    assert list(mixed["SOURCE"]) == ["/data/a", "/données/b"]
    masked = Table({"NOTE": MaskedColumn(["a", "b"], mask=[True, False])})   # a plug-in's
    assert compact_text_columns(masked)["NOTE"].mask.tolist() == [True, False]
    text_columns_as_str(table)
    assert table["SPECTYPE"].dtype == np.dtype("<U4") and list(table["SPECTYPE"]) == ["QSO",
                                                                                      "STAR"]
    assert table["SPECTYPE"].description == "class" and table["Z"].unit == "1"


def test_the_archive_stores_ascii_text_as_bytes_and_reads_it_back_as_before(tmp_path):
    """A run with a corrupt file (its reason a long message with the path): every text
    column is ``[ascii, N]`` in the file; read back, the table equals the in-memory run's,
    ``str`` columns of the same widths."""
    folder = tmp_path / "in"
    folder.mkdir()
    for path in [*SDSS_FILES[:2], LAMOST_FILES[0]]:
        shutil.copy(path, folder / path.name)
    (folder / "zz-corrupt.fits").write_bytes(SDSS_FILES[0].read_bytes()[:30000])
    out = tmp_path / "out.asdf"
    Pipeline(config(tmp_path)).run_to_file([folder], out)
    in_memory = Pipeline(config(tmp_path)).run([folder]).results
    text = [n for n in in_memory.colnames if in_memory[n].dtype.kind == "U"]
    assert {"SOURCE", "SPECTYPE", "ZWARN_REASON", "CAND_SPECTYPE"} <= set(text)
    datatypes = stored_datatypes(out)
    assert all(datatypes[n][0] == "ascii" for n in text), {n: datatypes[n] for n in text}
    on_disk = read_archive(out).results
    for name in in_memory.colnames:
        assert on_disk[name].dtype == in_memory[name].dtype, name
    for name in text:
        assert np.array_equal(on_disk[name], in_memory[name]), name
    assert "truncated" in on_disk["ZWARN_REASON"][-1]


def test_a_non_ascii_path_keeps_its_column_in_ucs4_and_loses_nothing(tmp_path):
    """One file under a non-ASCII folder (its batch's SOURCE is UCS-4, the other's ASCII):
    the archive's SOURCE is UCS-4 with both paths exact; the other text stays ASCII."""
    plain, accented = tmp_path / "plain", tmp_path / "Ångström données"
    plain.mkdir()
    accented.mkdir()
    files = [shutil.copy(SDSS_FILES[0], plain / SDSS_FILES[0].name),
             shutil.copy(SDSS_FILES[1], accented / SDSS_FILES[1].name)]
    out = tmp_path / "out.asdf"
    Pipeline(config(tmp_path)).run_to_file(files, out)
    datatypes = stored_datatypes(out)
    assert datatypes["SOURCE"][0] == "ucs4" and datatypes["SPECTYPE"][0] == "ascii"
    sources = list(read_archive(out).results["SOURCE"])
    assert [Path(s) for s in sources] == [Path(f).resolve() for f in files]
