"""MkDocs hooks: the measured results join the site, and the built site never reaches the network.

`on_files`: every Markdown page, figure and data file in experiments/results/ (md, png, csv, json,
yaml) is added to the site as `results/<path>`, so docs/results.md links to `results/gymnax.md` and the
pages' own relative links (to each other and to their figures) resolve as they do in the repository.
Nothing is copied into docs/.

`on_post_build`: Material's JavaScript bundle can load two scripts from unpkg.com when a page is
viewed: a ResizeObserver polyfill (only in a browser without ResizeObserver) and mermaid (only on a
page with a mermaid diagram; these pages have none). Their addresses are pointed at a local path that
does not exist, so that no browser fetches anything from the internet for this site, whatever it lacks.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

SOURCE = Path("experiments") / "results"
TARGET = "results"
SUFFIXES = {".md", ".png", ".csv", ".json", ".yaml"}
CDN = "https://unpkg.com/"
NOT_FETCHED = "./not-fetched/"  # a local path: a script that would come from the CDN fails to load instead


def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = Path(config.config_file_path).resolve().parent / SOURCE
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in SUFFIXES:
            src_uri = f"{TARGET}/{path.relative_to(root).as_posix()}"
            if files.get_file_from_path(src_uri) is not None:
                raise ValueError(f"{src_uri} is both in docs/ and in {SOURCE}/")
            files.append(File.generated(config, src_uri, abs_src_path=str(path)))
    return files


def on_post_build(config: MkDocsConfig) -> None:
    for path in (Path(config.site_dir) / "assets" / "javascripts").glob("*.js*"):
        text = path.read_text(encoding="utf-8")
        if "unpkg.com" in text:
            # the source map's comments name the CDN too
            path.write_text(text.replace(CDN, NOT_FETCHED).replace("unpkg.com", "a CDN"), encoding="utf-8")
