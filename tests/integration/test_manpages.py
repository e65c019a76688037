"""The manual pages in doc/ (issue #12): each renders with groff without a
warning, and imapmux.conf(5) documents exactly the keys common/cfg.c
accepts, each in the section it belongs to, so that a key added to cfg.c's
tables without a line in the page (or one documented that is gone) fails
here. The keys are read from cfg.c's tables (`static const struct key_def
NAME_keys[]`, one `{"key", ...}` row a key) and from sec_defs, which names
each section kind's table."""

import glob
import os
import re
import subprocess

import pytest

import lab

# documents: the manual pages
pytestmark = pytest.mark.nosan

DOC = os.path.join(lab.REPO, "doc")
CFG_C = os.path.join(lab.REPO, "common", "cfg.c")
CONF_5 = os.path.join(DOC, "imapmux.conf.5")
PAGES = sorted(glob.glob(os.path.join(DOC, "*.[1-9]")))


@pytest.mark.parametrize("page", PAGES, ids=[os.path.basename(p) for p in PAGES])
def test_page_renders_without_warnings(page):
    # The default line length and two terminal widths: a word too long to
    # break or a line that cannot be adjusted shows at some width only.
    for ll in ([], ["-rLL=65n"], ["-rLL=100n"]):
        p = subprocess.run(["groff", "-man", "-ww", "-z"] + ll + [page], capture_output=True,
                           text=True, timeout=20, env=dict(os.environ, LC_ALL="C.UTF-8"))
        assert p.returncode == 0 and p.stderr == "", (ll, p.stderr)


def test_the_pages_the_issue_asks_for_are_there():
    names = {os.path.basename(p) for p in PAGES}
    assert {"imapmux.8", "imapmux.conf.5", "imapmuxctl.8"} <= names, names


def cfg_keys():
    """{section heading as the page writes it ("[imapmux]", "[listen NAME]"):
    set of keys} from cfg.c's key tables."""
    src = open(CFG_C).read()
    tables = {}
    for name, body in re.findall(r"static const struct key_def (\w+)\[\] = \{(.*?)\n\};",
                                 src, re.S):
        tables[name] = set(re.findall(r'^\s*\{"([a-z0-9_]+)",', body, re.M))
    sections = {}
    used = set()
    for kind, named, table in re.findall(
            r'\[SEC_\w+\] = \{"(\w*)", (true|false), (\w+), ', src):
        if table == "NULL":
            continue
        assert table in tables, (kind, table, sorted(tables))
        used.add(table)
        sections["[%s NAME]" % kind if named == "true" else "[%s]" % kind] = tables[table]
    # The reading of cfg.c is itself checked: every table belongs to a
    # section, none is empty, and the keys everyone knows are found.
    assert used == set(tables), (used, sorted(tables))
    assert all(tables.values()), tables
    assert "workers" in sections["[imapmux]"] and "address" in sections["[backend NAME]"]
    return sections


def doc_keys(text):
    """{section heading: set of keys} from the page: in each `.SS "[...]"`,
    the tags of its `.TP`/`.TQ` entries, each written `.B key`."""
    sections = {}
    current = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r'^\.SS "?(\[[^"]*\])"?$', line)
        if m:
            current = sections.setdefault(m.group(1), set())
            continue
        if line.startswith(".SH") or line.startswith(".SS"):
            current = None
            continue
        if current is not None and line in (".TP", ".TQ"):
            tag = lines[i + 1] if i + 1 < len(lines) else ""
            m = re.match(r"^\.B ([a-z0-9_]+)$", tag)
            assert m, "entry in a key section not tagged '.B key': %r (line %d)" % (tag, i + 2)
            assert m.group(1) not in current, "%s twice" % m.group(1)
            current.add(m.group(1))
    return sections


def _compare(want, got):
    problems = []
    for sec in sorted(set(want) | set(got)):
        if sec not in got:
            problems.append("no section %s in imapmux.conf.5" % sec)
            continue
        if sec not in want:
            problems.append("imapmux.conf.5 has section %s, cfg.c does not" % sec)
            continue
        for k in sorted(want[sec] - got[sec]):
            problems.append("%s %s: accepted by cfg.c, not in imapmux.conf.5" % (sec, k))
        for k in sorted(got[sec] - want[sec]):
            problems.append("%s %s: in imapmux.conf.5, not accepted by cfg.c" % (sec, k))
    return problems


def test_conf_page_documents_every_key_of_cfg_c_in_its_section():
    want = cfg_keys()
    text = open(CONF_5).read()
    problems = _compare(want, doc_keys(text))
    assert not problems, "\n".join(problems)

    # And the check sees a key going missing: the page without its entry
    # for [backend NAME] forward_id, or with it moved to [redis].
    entry = ".TP\n.B forward_id\n"
    assert text.count(entry) == 1
    cut = _compare(want, doc_keys(text.replace(entry, "")))
    assert cut == ["[backend NAME] forward_id: accepted by cfg.c, not in imapmux.conf.5"], cut
    redis_at = text.index('.SS "[redis]"\n') + len('.SS "[redis]"\n')
    moved = text.replace(entry, "")
    moved = moved[:redis_at] + entry + "Moved.\n" + moved[redis_at:]
    assert len(_compare(want, doc_keys(moved))) == 2
