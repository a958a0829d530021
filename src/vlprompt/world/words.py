"""The embedded world's word corpus for NegLabel / CSP (``method.corpus: world``).

The world's tiny CLIPs were pretrained on the captions of :mod:`vlprompt.world.generate` only, so WordNet's 70,000
words are mostly tokens they never saw. This corpus is the world's caption vocabulary instead: every shape name
(the ID shapes, the OOD shapes ``OOD_SHAPES`` and the never-pretrained ``NOVEL_SHAPES``), the words captions use for
them, generic nouns, backgrounds and textures, styles as nouns; colours, patterns, sizes and style adjectives as
adjectives; and a few common words. Like WordNet, which contains the names of iNaturalist's species, it necessarily
contains the names of the world's OOD classes (flower, hourglass, ... lightning bolt): negative labels are mined
from a corpus without knowing the OOD set. The ID classes themselves are ranked like any word (NegLabel keeps only
the least ID-like ones).
"""

from __future__ import annotations

from vlprompt.core.version import __version__
from vlprompt.methods.neglabel.corpus import WordCorpus
from vlprompt.world import generate as g

#: Common words besides the captions' (nouns and adjectives), so that the pool is not only attribute names.
COMMON_NOUNS = ("thing", "item", "picture", "image", "scene", "pattern", "surface", "line", "corner", "edge",
                "outline", "shadow", "light", "colour", "texture", "frame", "page", "table", "floor", "field",
                "beach", "lawn", "cloud", "wave", "dot", "stripe", "block", "pixel", "noise", "grain")
COMMON_ADJECTIVES = ("bright", "dark", "pale", "round", "pointed", "flat", "curved", "straight", "blank", "empty",
                     "simple", "grainy", "blurry", "blocky", "wooden", "sandy", "grassy", "cloudy", "shiny", "rough")


def world_words() -> tuple[list[str], list[str]]:
    """``(nouns, adjectives)`` of the world's captions plus :data:`COMMON_NOUNS` / :data:`COMMON_ADJECTIVES`,
    sorted."""
    nouns = set(g.SHAPES) | set(g._GENERIC_NOUNS) | set(g.TEXTURES)
    nouns |= {b for b in g.BACKGROUNDS if b not in ("plain", "speckled")}
    nouns |= {w for words in g._SHAPE_WORDS.values() for w in words}
    nouns |= {"sketch", "drawing", "cartoon", "painting", "illustration", "artwork", "render", "snapshot",
              "close-up", "doodle", "clip art", "pixel art", "watercolour", "checkerboard", "confetti", "speckles",
              "zigzags", "ripples", "planks", "sky", "moon", "polka dots"}
    nouns |= set(COMMON_NOUNS)
    adjectives = set(g.COLOUR_NAMES) | set(g.PATTERNS) | set(g.SIZES)
    adjectives |= {w for words in g._SIZE_WORDS.values() for w in words}
    adjectives |= {w for adjs, _ in g._PATTERN_WORDS.values() for w in adjs}
    adjectives |= {"pixelated", "noisy", "painted", "sketched", "pencil", "oil", "low resolution", "corrupted",
                   "speckled", "checkered", "striped"}
    adjectives |= set(COMMON_ADJECTIVES)
    adjectives -= nouns
    return sorted(nouns), sorted(adjectives)


def world_corpus() -> WordCorpus:
    """The world corpus: files ``noun.world`` and ``adj.world``."""
    nouns, adjectives = world_words()
    return WordCorpus({"adj.world": tuple(adjectives), "noun.world": tuple(nouns)},
                      "the embedded world's caption vocabulary (vlprompt.world.words)", __version__)
