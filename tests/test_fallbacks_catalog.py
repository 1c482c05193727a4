"""Fallback chains in the catalog: validated at load, never a partial state (issue 16)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.catalog import DEFAULT_FIRST_BYTE_TIMEOUT, CatalogError, load, parse

BASE = """
[models."bookbag-local"]
provider = "local"
credits = 1

[models.a]
provider = "openai"
credits = 5
aliases = ["Model A"]
{a}

[models.b]
provider = "openai"
credits = 2
{b}

[models.c]
provider = "anthropic"
credits = 1
{c}

[models.emb]
provider = "openai"
kind = "embedding"
credits = 0

[plans.free]
credits = 1
"""


def catalog_text(a: str = "", b: str = "", c: str = "") -> str:
    return BASE.format(a=a, b=b, c=c)


def test_chains_are_canonical_and_expanded_through_the_fallbacks_own() -> None:
    cat = parse(tomllib.loads(catalog_text(a='fallbacks = ["B"]\nfirst_byte_timeout = 2.5',
                                           b='fallbacks = ["c"]')))
    a = cat.resolve("Model A")
    assert a.fallbacks == ("b", "c") and a.first_byte_timeout == 2.5
    assert cat.resolve("b").fallbacks == ("c",)
    assert cat.resolve("c").fallbacks == ()
    assert cat.resolve("c").first_byte_timeout == DEFAULT_FIRST_BYTE_TIMEOUT == 30.0


@pytest.mark.parametrize(("fields", "message"), [
    ({"a": 'fallbacks = ["nope"]'}, r'\[models."a"\]: fallbacks: unknown model \'nope\''),
    ({"a": 'fallbacks = ["emb"]'}, "'emb' is an embedding model"),
    ({"a": 'fallbacks = ["Model A"]'}, "'Model A' is the model itself"),
    ({"a": 'fallbacks = ["b", "B"]'}, "'B' is listed twice"),
    ({"a": 'fallbacks = ["bookbag-local"]'}, "mixes bookbag-local with provider models"),
    ({"a": 'fallbacks = ["b"]', "b": 'fallbacks = ["c"]', "c": 'fallbacks = ["a"]'},
     "fallbacks form a cycle: a -> b -> c -> a"),
    ({"a": 'fallbacks = "b"'}, "'fallbacks' must be a list of non-empty strings"),
    ({"a": "first_byte_timeout = 0"}, "'first_byte_timeout' must be a number of seconds > 0"),
    ({"a": "first_byte_timeout = true"}, "'first_byte_timeout' must be a number of seconds"),
])
def test_bad_chains_are_refused_at_load(fields: dict[str, str], message: str,
                                        tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=message):
        parse(tomllib.loads(catalog_text(**fields)))
    path = tmp_path / "pricing.toml"  # through the loader too: the file is named
    path.write_text(catalog_text(**fields))
    with pytest.raises(CatalogError, match=str(path)):
        load(path)


def test_an_embedding_model_has_no_fallbacks() -> None:
    text = catalog_text().replace('kind = "embedding"', 'kind = "embedding"\nfallbacks = ["a"]')
    with pytest.raises(CatalogError, match="fallbacks and first_byte_timeout are for chat"):
        parse(tomllib.loads(text))


def test_the_shipped_catalog_documents_fallbacks() -> None:
    text = (Path(__file__).parent.parent / "pricing.toml").read_text()
    assert "#   fallbacks" in text and "first_byte_timeout" in text
    example = "\n".join(line[3:] for line in text.splitlines() if line.startswith("#   [models")
                        or line.startswith("#   fallbacks = ") or line.startswith("#   first_"))
    assert 'fallbacks = ["claude-haiku-4-5", "gpt-4o-mini"]' in example
    shipped = load(Path(__file__).parent.parent / "pricing.toml")
    members = example.split("fallbacks = ")[1].split("\n")[0]
    assert all(shipped.resolve(m).kind == "chat" for m in tomllib.loads(f"x = {members}")["x"])
