"""The Debian package (issue #12): `make deb` builds it from the tree
(debian/), dpkg-deb shows what it holds, and it is installed for real with
dpkg -i on this machine: the system user, the conffile as shipped accepted by
`imapmux -t` (as root and as the unit's user), the installed imapmux serving
a login through the test's Dovecot as the user imapmux, then dpkg --purge.

The machine is left as it was found, also when a check fails: the package is
purged in a finally, and what its scripts add that purge keeps by Debian's
practice (the user and group imapmux, its membership in ssl-cert, the snakeoil
certificate its postinst makes when it is missing) is taken away again when
it was not there before. A machine with an imapmux package of its own is
skipped, never touched.
"""

import glob
import grp
import os
import pwd
import re
import shutil
import signal
import ssl
import subprocess
import time

import pytest

import imapc
import lab
from conftest import password

# packaging: the .deb is built from the sources with Debian's flags, never the sanitized binary
pytestmark = pytest.mark.nosan

DEB_DIR = os.path.join(lab.REPO, "build", "deb")
CONF = "/etc/imapmux/imapmux.conf"
SNAKEOIL_CERT = "/etc/ssl/certs/ssl-cert-snakeoil.pem"
SNAKEOIL_KEY = "/etc/ssl/private/ssl-cert-snakeoil.key"
UNIT = "/lib/systemd/system/imapmux.service"


def _run(argv, timeout=60, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)


def _dpkg(*args):
    """dpkg ARGS, waiting (at most a minute) while another dpkg or apt holds
    its lock: other work on this machine may be installing packages."""
    for _ in range(30):
        r = _run(["dpkg"] + list(args), timeout=300)
        if r.returncode == 0 or "lock" not in r.stderr:
            return r
        time.sleep(2)
    return r


def _dpkg_installed(pkg):
    """True when dpkg knows pkg in any state but "not installed" (config
    files left, half installed...): then it is not ours to touch."""
    r = _run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", pkg])
    return r.returncode == 0 and not r.stdout.startswith("un")


def _git_status():
    r = _run(["git", "-C", lab.REPO, "status", "--porcelain", "--untracked-files=all"])
    return r.stdout if r.returncode == 0 else None


@pytest.fixture(scope="module")
def deb():
    """make deb, once for the module: the path of build/deb/imapmux_V_A.deb."""
    if shutil.which("dpkg-buildpackage") is None:
        pytest.skip("dpkg-buildpackage is missing (dpkg-dev; make deps installs it)")
    before = _git_status()
    # Whatever build this run tests (make test SANITIZE=1 passes it down in
    # MAKEFLAGS), the package is built as Debian builds it.
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "SANITIZE", "CC", "CFLAGS", "OPT")}
    r = _run(["nice", "make", "-s", "-C", lab.REPO, "deb"], timeout=900, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    # The build happens in a copy under build/ (ignored): the tree is as it was.
    assert _git_status() == before, (before, _git_status())
    debs = [p for p in glob.glob(os.path.join(DEB_DIR, "imapmux_*_*.deb"))
            if "dbgsym" not in p]
    assert len(debs) == 1, debs
    return debs[0]


def _field(deb, name):
    r = _run(["dpkg-deb", "-f", deb, name])
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_package_holds_the_programs_unit_manuals_and_one_conffile(deb):
    r = _run(["dpkg-deb", "-c", deb])
    assert r.returncode == 0, r.stderr
    files = {}
    for line in r.stdout.splitlines():
        perms, owner, _size, _date, _time, name = line.split(None, 5)
        files[name.split(" -> ")[0].lstrip(".")] = (perms, owner)
    want = {
        "/usr/sbin/imapmux": "-rwxr-xr-x",
        "/usr/sbin/imapmuxctl": "-rwxr-xr-x",
        UNIT: "-rw-r--r--",
        CONF: "-rw-r--r--",          # 0640 root:imapmux once postinst has run
        "/usr/lib/sysusers.d/imapmux.conf": "-rw-r--r--",
        "/usr/share/man/man8/imapmux.8.gz": "-rw-r--r--",
        "/usr/share/man/man8/imapmuxctl.8.gz": "-rw-r--r--",
        "/usr/share/man/man5/imapmux.conf.5.gz": "-rw-r--r--",
        "/usr/share/doc/imapmux/README.md": "-rw-r--r--",   # the unit's Documentation=
        "/usr/share/doc/imapmux/proxy.conf": "-rw-r--r--",
        "/usr/share/doc/imapmux/copyright": "-rw-r--r--",
    }
    for name, perms in want.items():
        assert name in files, (name, sorted(files))
        assert files[name] == (perms, "root/root"), (name, files[name])
    # Nothing of the build tree came along.
    assert not [f for f in files if f.endswith(".o") or "/debian/" in f], files

    r = _run(["dpkg-deb", "-I", deb, "conffiles"])
    assert r.returncode == 0 and r.stdout.split() == [CONF], r.stdout + r.stderr
    depends = [d.strip() for d in _field(deb, "Depends").split(",")]
    assert "ssl-cert" in depends, depends
    # From ${shlibs:Depends}: the libraries the programs link.
    for lib in ("libssl3", "libev4", "libhiredis", "libcrypt1", "libc6"):
        assert any(d.startswith(lib) for d in depends), (lib, depends)
    # The version is the one the program says it is.
    r = _run([os.path.join(lab.REPO, "proxy", "imapmux"), "-V"])
    if r.returncode == 0:
        assert r.stdout.split()[1] == _field(deb, "Version"), r.stdout


def _snapshot():
    """What the package's scripts may leave behind, before they run."""
    def member(user, group):
        try:
            return user in grp.getgrnam(group).gr_mem
        except KeyError:
            return False
    try:
        pwd.getpwnam("imapmux")
        had_user = True
    except KeyError:
        had_user = False
    try:
        grp.getgrnam("imapmux")
        had_group = True
    except KeyError:
        had_group = False
    return {"user": had_user, "group": had_group,
            "in_ssl_cert": member("imapmux", "ssl-cert"),
            "snakeoil": os.path.exists(SNAKEOIL_CERT) or os.path.exists(SNAKEOIL_KEY)}


def _restore(before):
    """Take back what the install added and the purge keeps (see the module
    docstring); only what was not there before."""
    if not before["snakeoil"]:
        for link in glob.glob("/etc/ssl/certs/*"):
            if os.path.islink(link) and os.readlink(link) == os.path.basename(SNAKEOIL_CERT):
                os.unlink(link)
        for f in (SNAKEOIL_CERT, SNAKEOIL_KEY):
            if os.path.exists(f):
                os.unlink(f)
    if not before["user"]:
        _run(["userdel", "imapmux"])
    elif not before["in_ssl_cert"]:
        _run(["gpasswd", "-d", "imapmux", "ssl-cert"])
    if not before["group"]:
        try:
            grp.getgrnam("imapmux")
            _run(["groupdel", "imapmux"])
        except KeyError:
            pass


def _conf_for_test(text, ports, backend_port, stats_port):
    """The packaged configuration with the test's loopback ports, the test's
    Dovecot as its backend, and user = imapmux (this imapmux starts as
    root); every rewrite must find its line exactly once."""
    subs = [
        (r"^address = 0\.0\.0\.0:993$", "address = 127.0.0.1:%d" % ports[0]),
        (r"^address = 0\.0\.0\.0:143$", "address = 127.0.0.1:%d" % ports[1]),
        (r"^address = 192\.0\.2\.1:143$", "address = 127.0.0.1:%d" % backend_port),
        (r"^stats_listen = 127\.0\.0\.1:9100 ", "stats_listen = 127.0.0.1:%d " % stats_port),
        (r"^\[imapmux\]$", "[imapmux]\nuser = imapmux\nworkers = 1\nshutdown_timeout = 5"),
        (r"^workers = auto ", "#workers = auto "),
    ]
    for pat, rep in subs:
        text, n = re.subn(pat, rep, text, flags=re.M)
        assert n == 1, (pat, text)
    return text


def _proc_ids(pid):
    with open("/proc/%d/status" % pid) as f:
        status = dict(l.split(":", 1) for l in f if ":" in l)
    return (status["Uid"].split(), status["Gid"].split(), status["Groups"].split())


def test_install_run_as_imapmux_and_purge(deb, dovecot, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("dpkg -i needs root")
    if _dpkg_installed("imapmux"):
        pytest.skip("an imapmux package is installed on this machine already; "
                    "the test installs and purges its own, so it leaves that one alone")
    before = _snapshot()
    mux = None
    try:
        r = _dpkg("-i", deb)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "not started" in r.stdout, r.stdout

        # The system user: no home, no shell, in ssl-cert for the snakeoil key.
        pw = pwd.getpwnam("imapmux")
        if not before["user"]:   # one made before (README: adduser) is left as it is
            assert pw.pw_dir == "/nonexistent" and pw.pw_shell == "/usr/sbin/nologin", pw
            assert pw.pw_uid < 1000, pw
        assert grp.getgrgid(pw.pw_gid).gr_name == "imapmux"
        assert "imapmux" in grp.getgrnam("ssl-cert").gr_mem
        st = os.stat(CONF)
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, pw.pw_gid), oct(st.st_mode)

        # The unit is in place, as in the tree, and not enabled (nor started:
        # nothing listens on 993).
        with open(UNIT) as f, open(os.path.join(lab.REPO, "deploy", "imapmux.service")) as g:
            assert f.read() == g.read()
        assert not glob.glob("/etc/systemd/system/*.wants/imapmux.service")

        # The conffile as shipped: absolute paths, accepted by -t as root and
        # as the unit runs it (user imapmux with its groups, as systemd's
        # User= gives them: it reads the key as a member of ssl-cert).
        text = open(CONF).read()
        for key, path in re.findall(r"^(cert|key|ca) = (\S+)", text, re.M):
            assert path.startswith("/"), (key, path)
        assert set(re.findall(r"^(?:cert|key) = (\S+)", text, re.M)) == {SNAKEOIL_CERT,
                                                                       SNAKEOIL_KEY}
        assert not re.search(r"^(user|group) =", text, re.M), "the unit is User=imapmux"
        # Built as Debian builds: no sanitizer runtime, whatever this run tests.
        r = _run(["ldd", "/usr/sbin/imapmux"])
        assert r.returncode == 0 and "libasan" not in r.stdout, r.stdout
        r = _run(["/usr/sbin/imapmux", "-t", "-c", CONF])
        assert r.returncode == 0 and "configuration ok" in r.stderr, r.stderr
        r = _run(["setpriv", "--reuid=imapmux", "--regid=imapmux", "--init-groups",
                  "/usr/sbin/imapmux", "-t", "-c", CONF])
        assert r.returncode == 0 and "configuration ok" in r.stderr, r.stderr

        # The installed imapmux, started as root with the packaged file on
        # the test's ports and Dovecot, becomes imapmux once bound and serves
        # a login over TLS with the snakeoil certificate.
        ports = (lab.free_port(), lab.free_port())
        conf = tmp_path / "imapmux.conf"
        conf.write_text(_conf_for_test(text, ports, dovecot.port, lab.free_port()))
        mux = lab.Imapmux(str(conf), str(tmp_path / "imapmux.log"), binary="/usr/sbin/imapmux")
        mux.start()
        uid, gid, groups = _proc_ids(mux.pid)
        assert uid == [str(pw.pw_uid)] * 4 and gid == [str(pw.pw_gid)] * 4, (uid, gid)
        assert groups == [str(pw.pw_gid)], groups
        assert "running as user imapmux (uid %d" % pw.pw_uid in mux.log_text()
        ctx = ssl.create_default_context(cafile=SNAKEOIL_CERT)
        ctx.check_hostname = False   # the snakeoil's name is the host's, not 127.0.0.1
        c = imapc.Client(ports[0], tls=ctx)
        c.greeting()
        c.login("alice", password("alice"))
        _, tagged = c.cmd("s", "SELECT INBOX")
        assert tagged.startswith(b"s OK"), tagged
        c.close()
        mux.signal(signal.SIGTERM)
        assert mux.wait(15) == 0, mux.log_tail_text()
        mux = None

        r = _dpkg("--purge", "imapmux")
        assert r.returncode == 0, r.stdout + r.stderr
        assert not _dpkg_installed("imapmux")
        for gone in ("/usr/sbin/imapmux", "/usr/sbin/imapmuxctl", "/etc/imapmux", UNIT,
                     "/var/lib/systemd/deb-systemd-helper-enabled/imapmux.service.dsh-also"):
            assert not os.path.lexists(gone), gone
    finally:
        if mux is not None:
            print(mux.log_tail_text(40))
            mux.stop()
        if _dpkg_installed("imapmux"):
            _dpkg("--purge", "imapmux")
        _restore(before)
    assert _snapshot() == before
