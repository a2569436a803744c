"""The command line: arguments, output, exit codes. The work lives in the modules it calls."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, cast

from kheaders_pkg import __version__
from kheaders_pkg.errors import ExitCode, KbuildError, KheadersError, missing_part

if TYPE_CHECKING:
    from kheaders_pkg.config import Config
    from kheaders_pkg.diskuse import DiskUse
    from kheaders_pkg.kbuild import KbuildRecord
    from kheaders_pkg.layout import Layout
    from kheaders_pkg.sync import Judgement, SyncResult
    from kheaders_pkg.tree import LinkState, TreeState

log = logging.getLogger("kheaders-pkg")

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: stdout was closed before we finished writing

EPILOG = """\
exit codes:
  0  done; for check: headers are fresh (ours, or a distro tree that matches)
  1  internal error (a bug: please report it, with -vv output)
  2  usage error
  3  check: headers are missing or stale; `sync` would regenerate them
  4  a tree we do not own is stale; left alone (see foreign = "divert")
  5  unsupported: the kernel has no CONFIG_IKHEADERS, or no archive can be had, or an
     optional part this command needs is not installed (the line names the package)
  6  the headers archive is corrupt, hostile or over a limit; nothing published
  7  the kernel's files (notes, config, image, module) are unreadable or malformed
  8  filesystem: read-only, full, permission denied or an unsafe path; previous tree kept
  9  busy: another run held the lock past lock_timeout
 10  the configuration file is invalid
 11  emitting or registering a package failed
 12  the package manager is busy: the registration is queued for the next run
 13  verify: the published tree differs from its manifest (sync --verify replaces it)
 14  headers published, but not at /lib/modules/KVER/build (read-only root without
     systemd-sysext, or the merge failed): the line names the path and BCC_KERNEL_SOURCE
 15  kbuild: a module-building tree cannot be made (the line says why); headers-only tree kept
"""


def _add_global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """--root, --kernel-fs, --config, -v, -q: on the main parser with their defaults, and on each
    subcommand with none (argparse.SUPPRESS), so a value given before the command is kept."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    p.add_argument(
        "--root",
        type=Path,
        default=default(Path("/")),
        help="target filesystem holding lib/modules, usr/src, etc, var (default /)",
    )
    p.add_argument(
        "--kernel-fs",
        type=Path,
        default=default(Path("/")),
        help="where the running kernel's sys/ and proc/ are read from (default /)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=default(None),
        help="configuration file (default ROOT/etc/kheaders-pkg.toml)",
    )
    p.add_argument(
        "-v", "--verbose", action="count", default=default(0), help="more output (twice: debug)"
    )
    p.add_argument("-q", "--quiet", action="store_true", default=default(False), help="errors only")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kheaders-pkg",
        description="Keep /lib/modules/$KVER/build matching the running kernel, from its own "
        "CONFIG_IKHEADERS archive.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"kheaders-pkg {__version__}")
    _add_global_options(p, suppress=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The global options are accepted after the command too (`status --json --root /mnt` is what
    # people type): every subcommand takes them, with defaults that never override the main ones.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, suppress=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    def kernel_arg(sp: argparse.ArgumentParser, required: bool = False) -> None:
        sp.add_argument(
            "--kernel",
            metavar="KVER",
            required=required,
            help="a kernel that is not running, read from its files under --root",
        )

    s = command("status", help="show identities, the tree and the verdict")
    kernel_arg(s)
    s.add_argument("--json", action="store_true", help="one JSON object")
    s.add_argument(
        "--disk",
        action="store_true",
        help="also the disk every kernel's trees take, shared files counted once (reads every "
        "tree's directory entries)",
    )

    s = command("check", help="cheap boot-time check; exit code says what to do")
    kernel_arg(s)
    s.add_argument(
        "--condition",
        action="store_true",
        help="systemd ExecCondition= mapping: exit 0 when sync is needed, 1 when not",
    )

    s = command("sync", help="regenerate the tree when it is missing or stale")
    kernel_arg(s)
    s.add_argument("--dry-run", action="store_true", help="say what would be done")
    s.add_argument("--force", action="store_true", help="regenerate even when fresh")
    s.add_argument("--archive", type=Path, help="use this kheaders.tar.xz instead of the kernel's")
    s.add_argument(
        "--kbuild",
        action="store_true",
        help="also make the tree build modules (as `kbuild = true`; exit 15 if it cannot)",
    )

    s.add_argument(
        "--verify",
        action="store_true",
        help="also compare every file with the manifest; a damaged tree gets a new generation",
    )

    s = command("verify", help="compare the published tree with its manifest, file by file")
    kernel_arg(s)
    s.add_argument("--json", action="store_true", help="one JSON object")

    command("gc", help="remove generations nothing points to (keeps keep_generations)")

    s = command("restore", help="put back links we diverted or replaced")
    kernel_arg(s)

    s = command("remove", help="a kernel is going away: remove our tree and links for it")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--kernel", metavar="KVER", help="the kernel that is going away")
    which.add_argument(
        "--all",
        action="store_true",
        help="every kernel we made a tree for (the tool itself is being removed)",
    )

    s = command("emit", help="build a .deb, .rpm or .pkg.tar.zst of the generated tree")
    kernel_arg(s)
    s.add_argument("--format", choices=["deb", "rpm", "pacman"], required=True)
    s.add_argument("--out", type=Path, default=Path("."), help="output directory (default .)")

    s = command("register", help="register the generated tree in the package database")
    kernel_arg(s)
    s.add_argument(
        "--format",
        choices=["deb", "rpm", "pacman"],
        default=None,
        help="package format (default: detected from the root)",
    )

    s = command("hooks", help="install or remove the boot and package-manager hooks")
    s.add_argument("action", choices=["install", "remove"])
    s.add_argument(
        "--system", default=None, help="debian, fedora, arch or generic (default: detect)"
    )
    s.add_argument(
        "--executable",
        metavar="PATH",
        default=None,
        help="the kheaders-pkg the hooks run (default: the one on PATH, else this one)",
    )
    return p


def _layout_and_config(args: argparse.Namespace) -> tuple[Layout, Config]:
    from kheaders_pkg.config import load_config
    from kheaders_pkg.layout import Layout
    from kheaders_pkg.sysext import publish_mode, trees_dir_for

    base = Layout(root=args.root, kernel_fs=args.kernel_fs)
    config_path = args.config if args.config is not None else base.config_file()
    config = load_config(config_path, required=args.config is not None)
    mode = publish_mode(replace(base, trees_dir=config.trees_dir), config.publish)
    layout = Layout(
        root=args.root,
        kernel_fs=args.kernel_fs,
        trees_dir=trees_dir_for(mode, config.trees_dir),
        state_dir=config.state_dir,
        publish=mode,
    )
    return layout, config


def _status_object(j: Judgement) -> dict[str, object]:
    ident = j.facts.identity
    tree = j.tree

    def link(ls: LinkState) -> dict[str, object]:
        return {
            "path": str(ls.path),
            "kind": ls.kind,
            "target": ls.target,
            "resolved": str(ls.resolved) if ls.resolved else None,
            "problem": ls.problem,
        }

    identity: dict[str, object] | None = None
    if tree.stamp is not None:
        identity = asdict(tree.stamp)
    elif tree.foreign is not None:
        identity = asdict(tree.foreign)
    return {
        "release": ident.release,
        "uts_version": ident.uts_version,
        "build_id": ident.build_id,
        "config_sha256": ident.config_sha256,
        "config_source": ident.config_source,
        "ikheaders": ident.ikheaders,
        "archive_sha256": ident.archive.sha256 if ident.archive else None,
        "archive_size": ident.archive.size if ident.archive else None,
        "archive_source": ident.archive.source if ident.archive else None,
        "running": ident.running,
        "tree": {
            "path": str(tree.build.path),
            "kind": tree.kind,
            "target": tree.tree_inside,
            "identity": identity,
            "stamp_error": tree.stamp_error,
            "owner": tree.owner,
            "build": link(tree.build),
            "source": link(tree.source),
            "publish": _publish_mode(tree),
            "extension": _extension_object(tree),
            "kbuild": _kbuild_object(j),
        },
        "verdict": j.verdict.kind,
        "reason": j.verdict.reason,
        "differs": list(j.verdict.differs),
        "evidence": list(j.verdict.evidence),
        "remarks": _remarks(j),
    }


def _publish_mode(tree: TreeState) -> str:
    return "sysext" if tree.extension is not None else "tree"


def _extension_object(tree: TreeState) -> dict[str, object] | None:
    """publish = sysext: our extension, its label and whether /lib/modules shows it (merged)."""
    ext = tree.extension
    if ext is None:
        return None
    return {
        "path": str(ext.path),
        "exists": ext.exists,
        "label": ext.label,
        "problem": ext.problem,
        "merged": ext.merged,
        "view_target": ext.view_target,
    }


def _remarks(j: Judgement) -> list[str]:
    """The kernel's remarks, then what our tree lacks and why (vmlinux.h: kernel/btf.py)."""
    from kheaders_pkg.kernel.btf import vmlinux_h_remark

    remarks = list(j.facts.identity.remarks)
    stamp = j.tree.stamp
    if stamp is not None and (note := vmlinux_h_remark(stamp.vmlinux_h, stamp.release)):
        remarks.append(note)
    return remarks


def cmd_status(args: argparse.Namespace) -> int:
    from kheaders_pkg.sync import judge

    layout, _ = _layout_and_config(args)
    j = judge(layout, args.kernel, thorough=True)
    obj = _status_object(j)
    # Opt-in: it stats every file of every generation, while status alone reads a few files.
    disk = _disk_use(layout) if args.disk else None
    if disk is not None:
        obj["disk"] = {**asdict(disk), "shared_bytes": disk.shared_bytes}
    if args.json:
        print(json.dumps(obj, indent=1, default=str))
        return 0
    ident = j.facts.identity
    cfg = f"{(ident.config_sha256 or 'unknown')[:16]} ({ident.config_source or 'none'})"
    print(f"kernel:  {ident.release}{'' if ident.running else ' (not running)'}")
    print(f"  build id: {ident.build_id or 'none'}")
    print(f"  config:   {cfg}")
    if ident.archive:
        digest = (ident.archive.sha256 or "not read")[:16]
        print(f"  archive:  {ident.archive.path} ({ident.archive.source}, {digest})")
    else:
        print(f"  archive:  none (CONFIG_IKHEADERS={ident.ikheaders or 'unknown'})")
    t = j.tree
    target = f" -> {t.tree_inside}" if t.tree_inside else ""
    owner = f", owned by {t.owner}" if t.owner else ""
    print(f"tree:    {t.build.path}{target} ({t.kind}{owner})")
    if t.extension is not None:
        merged = {True: "merged", False: "not merged", None: "merge not checked (--root)"}
        state = merged[t.extension.merged] if t.extension.exists else "absent"
        print(f"  extension: {t.extension.path} ({state})")
    kbuild = _kbuild_record(j)
    if kbuild is not None:
        print(f"  kbuild: {kbuild.summary}")
    print(f"verdict: {j.verdict.kind}: {j.verdict.reason}")
    for r in _remarks(j):
        print(f"  note: {r}")
    if disk is not None:
        print(
            f"disk:    {_mib(disk.bytes)} in {disk.trees} trees of all kernels "
            f"(shared files counted once; {_mib(disk.shared_bytes)} shared)"
        )
    return 0


def _disk_use(layout: Layout) -> DiskUse:
    """Every kernel's complete generations, each inode's blocks once (diskuse.py)."""
    from kheaders_pkg.diskuse import disk_use
    from kheaders_pkg.publish import published_generations

    return disk_use(published_generations(layout))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _kbuild_object(j: Judgement) -> dict[str, object] | None:
    record = _kbuild_record(j)
    return None if record is None else {**asdict(record), "summary": record.summary}


def _kbuild_record(j: Judgement) -> KbuildRecord | None:
    from kheaders_pkg.tree import TreeKind

    if j.tree.kind is not TreeKind.OURS or j.tree.tree is None:
        return None
    from kheaders_pkg.kbuild import read_record

    return read_record(j.tree.tree)


def cmd_check(args: argparse.Namespace) -> int:
    if not args.condition:
        return _check(args)
    from kheaders_pkg.condition import condition_exit

    # ExecCondition=: an error must not skip the unit quietly (condition.py). It is printed
    # here (the journal keeps it) and decided like any other answer.
    try:
        code = _check(args)
    except KheadersError as e:
        print(f"kheaders-pkg: error: {e}", file=sys.stderr)
        code = int(e.exit_code)
    except Exception as e:  # a bug: sync runs and meets it where the unit fails visibly
        print(f"kheaders-pkg: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        code = int(ExitCode.INTERNAL)
    return condition_exit(code)


def _check(args: argparse.Namespace) -> int:
    from kheaders_pkg.sync import judge

    layout, _ = _layout_and_config(args)
    j = judge(layout, args.kernel)
    if not args.quiet:
        print(f"{j.verdict.kind}: {j.verdict.reason}")
    return int(j.verdict.exit_code)


def cmd_sync(args: argparse.Namespace) -> int:
    from kheaders_pkg.sync import SyncAction, sync

    layout, config = _layout_and_config(args)
    if args.kbuild:
        config = replace(config, kbuild=True)
    r = sync(
        layout,
        config,
        release=args.kernel,
        force=args.force,
        dry_run=args.dry_run,
        archive_file=args.archive,
        verify=args.verify,
    )
    v = r.before.verdict
    why = f"{v.kind}: {v.reason}"
    if r.repaired is not None:  # sync --verify found the published tree damaged
        why = f"damaged: {r.repaired.summary()}"
    if r.action is SyncAction.NOTHING:
        log.info("nothing to do: %s", v.reason)
        if not args.quiet:
            print(f"{v.kind}: {v.reason}")
        return 0
    if r.action in (SyncAction.WOULD_REGENERATE, SyncAction.WOULD_DIVERT):
        print(f"{v.kind}: {v.reason}; would regenerate from {_archive_desc(r)}")
        return 0
    if r.action is SyncAction.LEFT_FOREIGN:
        print(f'{v.kind}: {v.reason}; would regenerate with foreign = "divert"')
        return int(ExitCode.FOREIGN_STALE)
    after = r.after
    if r.action is SyncAction.RELABELLED:
        if not args.quiet:
            print(f"relabelled the extension of {r.generation} ({v.kind}: {v.reason})")
            if after is not None:
                print(f"{after.kind}: {after.reason}")
        return int(after.exit_code) if after is not None and after.needs_sync else 0
    if not args.quiet:
        print(f"regenerated {r.generation} ({why})")
        if after is not None:
            print(f"{after.kind}: {after.reason}")
    if after is not None and after.needs_sync:
        return int(after.exit_code)
    _after_sync_packaging(layout, config, r)
    if r.kbuild is not None:
        if not r.kbuild.ready:
            raise KbuildError(f"no module-building tree for {r.generation}: {r.kbuild.summary}")
        if not args.quiet:
            print(f"kbuild: {r.kbuild.summary}")
    return 0


def _archive_desc(r: SyncResult) -> str:
    a = r.before.facts.identity.archive
    return f"{a.path} ({a.source})" if a else "no archive"


def _after_sync_packaging(layout: Layout, config: Config, r: SyncResult) -> None:
    if not config.emit:
        return
    from kheaders_pkg.distro import emit_and_register

    emit_and_register(layout, config, r.before.facts.identity.release, r.generation)


def cmd_verify(args: argparse.Namespace) -> int:
    from kheaders_pkg.errors import TreeDamagedError
    from kheaders_pkg.verify import published_generation, verify_generation

    layout, _ = _layout_and_config(args)
    release = args.kernel or _running_release(layout)
    tree = published_generation(layout, release)
    if tree is None:
        print(f"{release}: no tree of ours is published (`status` says whose it is)")
        return int(ExitCode.NEEDS_SYNC)
    v = verify_generation(tree, release)
    if not v.intact and published_generation(layout, release) != tree:
        # A sync swapped in a new generation (and gc took the old one) while we read it.
        tree = published_generation(layout, release) or tree
        v = verify_generation(tree, release)
    if args.json:
        print(json.dumps(v.to_json(), indent=1))
    elif v.intact and not args.quiet:
        print(f"intact: {v.checked} files of {tree} match the manifest")
    if not v.intact:
        raise TreeDamagedError(f"{release}: {v.summary()}; `sync --verify` makes a new generation")
    return 0


def _running_release(layout: Layout) -> str:
    from kheaders_pkg.errors import KernelDataError

    try:
        return layout.kernel.osrelease.read_text().strip()
    except OSError as e:
        raise KernelDataError(f"{layout.kernel.osrelease}: {e.strerror}") from None


def cmd_gc(args: argparse.Namespace) -> int:
    from kheaders_pkg.sync import gc_all

    layout, config = _layout_and_config(args)
    removed = gc_all(layout, config)
    if not args.quiet:
        print(f"removed {len(removed)} unused generation(s)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from kheaders_pkg.sync import restore

    layout, config = _layout_and_config(args)
    done = restore(layout, config, args.kernel)
    if not args.quiet:
        print("restored: " + (", ".join(done) if done else "nothing to restore"))
        from kheaders_pkg.layout import EXTENSIONS_DIR, PublishMode

        if done and layout.publish is PublishMode.SYSEXT:
            print(
                f"removed our systemd-sysext extension of {', '.join(done)} from "
                f"{EXTENSIONS_DIR}: the distribution's build/source show again"
            )
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from kheaders_pkg.sync import releases_with_records, remove

    layout, config = _layout_and_config(args)
    if args.all:
        from kheaders_pkg.sync import releases_with_trees

        # Every release under the configured trees_dir (package removal scripts call this
        # rather than globbing a default path), and any whose links we recorded.
        releases = sorted(set(releases_with_trees(layout)) | set(releases_with_records(layout)))
    else:
        releases = [args.kernel]
    for release in releases:
        removed = remove(layout, config, release)
        if not args.quiet:
            print(f"removed {len(removed)} path(s) for {release}")
    return 0


def cmd_emit(args: argparse.Namespace) -> int:
    from kheaders_pkg.distro import emit_command

    layout, config = _layout_and_config(args)
    path = emit_command(layout, args.kernel, args.format, args.out)
    print(path)
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from kheaders_pkg.distro import register_command

    layout, config = _layout_and_config(args)
    msg = register_command(layout, config, args.kernel, args.format)
    if not args.quiet:
        print(msg)
    return 0


def cmd_hooks(args: argparse.Namespace) -> int:
    import shutil

    from kheaders_pkg.hooks import HookSystem, install_hooks, remove_hooks

    layout, _ = _layout_and_config(args)
    if args.action == "install":
        exe = args.executable or shutil.which("kheaders-pkg") or str(Path(sys.argv[0]).resolve())
        system = HookSystem(args.system) if args.system else None
        paths = install_hooks(layout, system, exe)
        verb = "installed"
    else:
        paths = remove_hooks(layout)
        verb = "removed"
    if not args.quiet:
        for p in paths:
            print(f"{verb} {p}")
    return 0


COMMANDS = {
    "status": cmd_status,
    "check": cmd_check,
    "sync": cmd_sync,
    "verify": cmd_verify,
    "gc": cmd_gc,
    "restore": cmd_restore,
    "remove": cmd_remove,
    "emit": cmd_emit,
    "register": cmd_register,
    "hooks": cmd_hooks,
}


def main(argv: Sequence[str] | None = None) -> int:
    from kheaders_pkg.log import setup

    args = build_parser().parse_args(argv)
    # Errors go through the logger too: under systemd it marks them <3>, so the journal files the
    # one line that says why a unit failed at PRIORITY=3, not as info.
    log = setup(-1 if args.quiet else args.verbose)
    stdout = sys.stdout
    sys.stdout = cast(TextIO, _ReaderMayLeave(stdout))
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, not at interpreter exit, where a closed pipe is a traceback
    except KheadersError as e:
        log.error("%s", e)
        return int(e.exit_code)
    except ModuleNotFoundError as e:
        missing = missing_part(e)
        if missing is None or args.verbose > 1:
            return _internal_error(e, args.verbose)
        log.error("%s", missing)
        return int(missing.exit_code)
    except BrokenPipeError:  # stderr's reader went away: end as SIGPIPE would, quietly
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(
            "kheaders-pkg: interrupted; nothing half-published (staging is cleaned next run)",
            file=sys.stderr,
        )
        return 130
    except Exception as e:  # a bug: one line unless asked for the traceback
        return _internal_error(e, args.verbose)
    finally:
        sys.stdout = stdout
    return code


class _ReaderMayLeave(io.TextIOBase):
    """stdout for a reader that may stop reading (`status | head -1`): once the pipe is closed
    the rest of the output goes to /dev/null, quietly, and the command ends with the status it
    would have had, as the reader took what it wanted."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._discard()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard()

    def isatty(self) -> bool:
        return bool(self._stream.isatty())

    def fileno(self) -> int:
        return int(self._stream.fileno())

    def _discard(self) -> None:
        # What is still buffered is flushed again at exit: let it land in /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)


def _internal_error(e: Exception, verbose: int) -> int:
    if verbose:
        raise e
    print(
        f"kheaders-pkg: internal error: {type(e).__name__}: {e} (run with -v for details)",
        file=sys.stderr,
    )
    return int(ExitCode.INTERNAL)


if __name__ == "__main__":
    sys.exit(main())
