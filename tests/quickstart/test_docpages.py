"""The documentation-page builder: main content only, pages at headings, queries taken out of pages."""

from __future__ import annotations

import gzip
import json

from metaembed.quickstart import docpages

PAGE = """<html><body>
<div class="sphinxsidebar"><h3>Navigation</h3><p>Sidebar text that is not content.</p></div>
<div class="body" role="main">
<section><h1>Widgets<a class="headerlink" href="#w">¶</a></h1>
<p>Widgets are small reusable parts of a user interface. They draw themselves on a canvas and react to events.</p>
<h2>Creating a widget factory</h2>
<p>A factory builds widgets from a declarative description. Each description names the widget class and its options.
The factory validates every option before it creates anything at all.</p>
<pre>factory = WidgetFactory()\nfactory.build("button")</pre>
<h2>Removing widgets from a running canvas</h2>
<p>Call remove with the widget to take it off the canvas. The canvas repaints the area that the widget covered before.</p>
</section></div>
<div class="footer"><p>Copyright footer.</p></div>
</body></html>"""


def test_blocks_come_from_the_main_content_only(tmp_path):
    (tmp_path / "widgets.html").write_text(PAGE)
    blocks = docpages.read_blocks(tmp_path / "widgets.html")
    texts = [b.text for b in blocks]
    assert texts[0] == "Widgets" and blocks[0].kind == "heading"  # the permalink "¶" is dropped
    assert not any("Sidebar" in t or "Copyright" in t or "Navigation" in t for t in texts)
    assert [b.kind for b in blocks].count("code") == 1


def test_a_theme_without_role_main_reads_its_main_div(tmp_path):
    # Django's manual marks its content <div id="yui-main">, not role="main": read before, no page came out
    django = PAGE.replace('<div class="body" role="main">', '<div id="yui-main"><div class="yui-b">') + "</div>"
    (tmp_path / "widgets.html").write_text(django)
    texts = [b.text for b in docpages.read_blocks(tmp_path / "widgets.html")]
    assert texts[0] == "Widgets" and not any("Sidebar" in t for t in texts)


def test_validation_pages_are_kept_apart_from_training_pages(tmp_path):
    root = tmp_path / "html"
    root.mkdir()
    for number in range(6):
        (root / f"widgets{number}.html").write_text(PAGE.replace("Widgets", f"Widgets {number}"))
    manuals = {"widgets-doc": str(root)}
    train, validation = docpages.collect(manuals, 3, seed=0, held_back=2)
    again = docpages.collect(manuals, 3, seed=0, held_back=2)
    assert (train, validation) == again  # deterministic
    assert len(train) == 3 and len(validation) == 2
    assert not {p.page_id for p in train} & {p.page_id for p in validation}
    assert [p.page_id for p in docpages.collect(manuals, 3, seed=0)] != []  # without held_back: pages only


def test_pages_and_queries_are_deterministic_and_sentences_leave_their_page(tmp_path):
    root = tmp_path / "html"
    root.mkdir()
    (root / "widgets.html").write_text(PAGE)
    (root / "genindex.html").write_text(PAGE)  # an index page: skipped
    first = docpages.manual_pages("widgets-doc", root, page_words=200)
    again = docpages.manual_pages("widgets-doc", root, page_words=200)
    assert [(p.page_id, p.text, p.queries) for p in first] == [(p.page_id, p.text, p.queries) for p in again]
    assert len(first) == 1 and first[0].page_id == "widgets-doc/widgets.html#0"
    page = first[0]
    kinds = [kind for kind, _ in page.queries]
    assert kinds.count("sentence") == 2 and kinds.count("heading") == 1
    for kind, text in page.queries:
        if kind == "sentence":
            assert text not in page.text and len(text.split()) >= 8
        else:
            assert text.startswith("Widgets: ") and text.removeprefix("Widgets: ") in page.text


def test_small_pages_split_at_headings(tmp_path):
    root = tmp_path / "html"
    root.mkdir()
    (root / "widgets.html").write_text(PAGE)
    pages = docpages.manual_pages("widgets-doc", root, page_words=40)
    assert len(pages) >= 2
    assert all(len(p.text.split()) <= 60 for p in pages)


def test_the_packaged_collection_is_consistent():
    from metaembed.quickstart.collection import load_collection, subset

    collection = load_collection()
    pages = {p["_id"] for p in collection["corpus"]}
    assert len(pages) == 500 and len(collection["queries"]) > len(pages)
    assert all(doc in pages for _, doc, _ in collection["qrels"])
    assert not set(collection["manuals"]) & set(docpages.TRAIN_MANUALS)  # held out from training
    assert all(p.split("/")[0] in docpages.HELD_OUT_MANUALS for p in pages)
    small = subset(collection, 20)
    assert len(small["corpus"]) == 20 and {row[1] for row in small["qrels"]} <= {p["_id"] for p in small["corpus"]}
    with gzip.open(docpages.Path(docpages.__file__).parent / "heldout_docs.json.gz", "rt") as handle:
        assert json.load(handle)["corpus"][0] == collection["corpus"][0]
