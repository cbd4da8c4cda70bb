"""deep: a music library's shape, artist/album/track — 50,000 album directories under 2,500
artist directories, 10 files each (`--quick`: 5,000 albums under 250 artists).

The flat `restart` tree has 100 directories; real libraries have tens of thousands, and
every directory costs an open, a listing and an inotify watch that a file does not.  The
figures are the restart's (see restart.py), on this tree: a first start that announces
every file (files/s, all of them or not), then restarts over the unchanged tree against an
`os.scandir` + `lstat` walk of the same tree in the same run (target >= 50%, as for the
flat tree), with 0 bytes hashed.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.harness import KIB, Ctx, loadavg, remove_tree, say, write_small_files
from bench.restart import FILE_SIZE, Shape, measure

ALBUMS_PER_ARTIST = 20
TRACKS_PER_ALBUM = 10
INSTANCE = "bench-deep"


def build_tree(tree: Path, artists: int) -> tuple[list[Path], int]:
    """Write the library under `tree`: (its files, its directories below the root)."""
    paths: list[Path] = []
    for artist in range(artists):
        for album in range(ALBUMS_PER_ARTIST):
            folder = tree / f"Artist {artist:04d}" / f"Album {album:02d}"
            folder.mkdir(parents=True)
            paths.extend(folder / f"{track:02d} Track.flac" for track in range(TRACKS_PER_ALBUM))
    write_small_files(paths, FILE_SIZE)
    return paths, artists * (1 + ALBUMS_PER_ARTIST)


def run(ctx: Ctx) -> None:
    artists = 250 if ctx.quick else 2_500
    albums = artists * ALBUMS_PER_ARTIST
    files = albums * TRACKS_PER_ALBUM
    base = ctx.scratch("deep")
    tree = base / "library"
    say(f"deep: {artists} artists x {ALBUMS_PER_ARTIST} albums x {TRACKS_PER_ALBUM} tracks = "
        f"{files} files x {FILE_SIZE // KIB} KiB in {artists + albums} directories; {loadavg()}")
    began = time.monotonic()
    build_tree(tree, artists)
    say(f"  tree written in {time.monotonic() - began:.1f}s")
    measure(ctx, base, tree, files,
            Shape("deep", INSTANCE, f"{files} unchanged files in {artists + albums} directories"))
    remove_tree(base)
