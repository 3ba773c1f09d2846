//! The embedded default corpus: English-like sentences from a small
//! probabilistic grammar (number agreement, verbs that pick their objects,
//! optional adjectives and place phrases) mixed with one-digit arithmetic facts
//! (`7 + 5 = 12`, `9 - 4 = 5`, digit by digit). Generated in process from a
//! fixed corpus seed (independent of the training seed), so every machine
//! trains on the same tokens, with no download.
//!
//! # The loss floor, computed rather than guessed
//! The generator makes a sequence of random choices (which alternative of a
//! rule, which operands) and the tokens are a function of those choices. The
//! grammar is LL(1) without empty alternatives ([`Grammar::check_ll1`], tested):
//! the alternatives of a rule start with disjoint sets of tokens, and an
//! arithmetic fact's operands end at the operator and at `=`. So a parser reads
//! the choices back from the tokens, and tokens and choices determine each
//! other. Then for a stretch of the corpus `H(tokens) = H(choices)`, and by the
//! chain rule `Σ_t H(x_t | x_<t) = Σ_i H(c_i | c_<i)`: the best possible
//! expected log-loss per token, given the whole history, is the choices'
//! entropy divided by the token count. Each choice is drawn from a
//! distribution fixed by the earlier choices, so `H(c_i | c_<i)` is the
//! entropy of the distribution it was drawn from; the generator adds that
//! entropy (the expectation, not the realised `−ln p`, which is noisier) at
//! every choice and divides by the tokens emitted.
//!
//! The floor is a lower bound on what a model sees: a window starts mid-line
//! without the earlier context, so its first tokens cost more — at most about
//! one line's entropy per window (lines average 7.8 tokens and 11.9 nats), so
//! at most ~0.05 nats/token at T = 256. The floor itself is ≈ 1.53 nats/token.
//! The answer digits of a fact cost nothing at the floor (they follow from the
//! operands), which a small model learns only after the grammar.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use super::{val_tokens, Inner, Source, Tokens, VAL_FRACTION};
use crate::error::ModelError;
use crate::rng::Rng;

/// The corpus seed: fixed, so the corpus is the same for every run and seed.
pub const CORPUS_SEED: u64 = 0xC0_2B05_5EED;

/// Tokens in the embedded corpus (at least; whole lines are kept).
pub const DEFAULT_TOKENS: usize = 1 << 22;

/// One step of a rule's alternative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// Emit this token.
    Token(u16),
    /// Expand this rule.
    Rule(usize),
    /// `a op b = c`: op ∈ {+, −} uniformly, a uniform in 0..=max, b uniform in
    /// 0..=max for + and in 0..=a for − (so c ≥ 0); numbers in decimal digits.
    Arithmetic { max: u32 },
}

#[derive(Clone, Debug)]
struct Alt {
    weight: f64,
    items: Vec<Item>,
}

#[derive(Clone, Debug)]
struct Rule {
    name: String,
    alts: Vec<Alt>,
    /// Cumulative normalised weights, for sampling.
    cumulative: Vec<f64>,
    /// Entropy of the normalised weights, nats.
    entropy: f64,
}

/// Builds a [`Grammar`]: intern tokens, declare rules, add weighted alternatives.
#[derive(Debug, Default)]
pub struct GrammarBuilder {
    vocab: Vec<String>,
    index: HashMap<String, u16>,
    rules: Vec<Rule>,
    arith: Option<ArithTokens>,
}

#[derive(Clone, Copy, Debug)]
struct ArithTokens {
    digits: [u16; 10],
    plus: u16,
    minus: u16,
    equals: u16,
}

impl GrammarBuilder {
    pub fn new() -> GrammarBuilder {
        GrammarBuilder::default()
    }

    /// The token for `text`, interned on first use (ids from 0, in order).
    pub fn tok(&mut self, text: &str) -> Item {
        Item::Token(self.intern(text))
    }

    fn intern(&mut self, text: &str) -> u16 {
        if let Some(&id) = self.index.get(text) {
            return id;
        }
        let id = self.vocab.len() as u16;
        self.vocab.push(text.to_string());
        self.index.insert(text.to_string(), id);
        id
    }

    /// Declares a rule (alternatives are added with [`GrammarBuilder::alt`]).
    pub fn rule(&mut self, name: &str) -> usize {
        self.rules.push(Rule {
            name: name.to_string(),
            alts: Vec::new(),
            cumulative: Vec::new(),
            entropy: 0.0,
        });
        self.rules.len() - 1
    }

    /// Adds an alternative with a relative weight.
    pub fn alt(&mut self, rule: usize, weight: f64, items: &[Item]) {
        self.rules[rule].alts.push(Alt {
            weight,
            items: items.to_vec(),
        });
    }

    /// One alternative per word, a single token each, with Zipf weights 1/(k+1).
    pub fn words(&mut self, rule: usize, words: &[&str]) {
        for (k, w) in words.iter().enumerate() {
            let t = self.tok(w);
            self.alt(rule, 1.0 / (k + 1) as f64, &[t]);
        }
    }

    /// An arithmetic fact item (interns the digits and `+ - =`).
    pub fn arithmetic(&mut self, max: u32) -> Item {
        if self.arith.is_none() {
            let mut digits = [0u16; 10];
            for (d, slot) in digits.iter_mut().enumerate() {
                *slot = self.intern(&d.to_string());
            }
            let (plus, minus, equals) = (self.intern("+"), self.intern("-"), self.intern("="));
            self.arith = Some(ArithTokens {
                digits,
                plus,
                minus,
                equals,
            });
        }
        Item::Arithmetic { max }
    }

    /// Finishes the grammar; `start` is the rule of one line.
    ///
    /// # Errors
    /// A message when a rule has no alternative or a non-positive weight.
    pub fn build(mut self, start: usize) -> Result<Grammar, String> {
        for r in &mut self.rules {
            let total: f64 = r.alts.iter().map(|a| a.weight).sum();
            if r.alts.is_empty()
                || r.alts
                    .iter()
                    .any(|a| !a.weight.is_finite() || a.weight <= 0.0 || a.items.is_empty())
            {
                return Err(format!(
                    "rule {} needs alternatives with positive weights and items",
                    r.name
                ));
            }
            let mut acc = 0.0;
            r.cumulative = r
                .alts
                .iter()
                .map(|a| {
                    acc += a.weight / total;
                    acc
                })
                .collect();
            r.entropy = r
                .alts
                .iter()
                .map(|a| a.weight / total)
                .map(|p| -p * p.ln())
                .sum();
        }
        Ok(Grammar {
            vocab: self.vocab,
            rules: self.rules,
            start,
            arith: self.arith,
        })
    }
}

/// A probabilistic grammar over single-token words.
#[derive(Clone, Debug)]
pub struct Grammar {
    vocab: Vec<String>,
    rules: Vec<Rule>,
    start: usize,
    arith: Option<ArithTokens>,
}

/// A generated corpus and the entropy of the choices that made it.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub tokens: Arc<Vec<u16>>,
    /// Σ over choices of the entropy of the distribution each was drawn from, nats.
    pub choice_entropy_nats: f64,
    pub lines: usize,
    /// Tokens 0..vocab_len are used.
    pub vocab_len: usize,
}

impl Corpus {
    /// The entropy rate: choice entropy per token, nats (see the module notes).
    pub fn loss_floor_nats(&self) -> f64 {
        self.choice_entropy_nats / self.tokens.len().max(1) as f64
    }
}

impl Grammar {
    /// The grammar of the embedded corpus.
    pub fn default_corpus() -> Grammar {
        default_grammar()
    }

    /// Number of distinct tokens (ids 0..vocab_len).
    pub fn vocab_len(&self) -> usize {
        self.vocab.len()
    }

    /// The text of a token, if it is one of this grammar's.
    pub fn token_text(&self, token: u32) -> Option<&str> {
        self.vocab.get(token as usize).map(|s| s.as_str())
    }

    /// Readable text of tokens: words separated by spaces, lines by newlines.
    pub fn decode(&self, tokens: &[u32]) -> String {
        let mut out = String::new();
        for &t in tokens {
            match self.token_text(t) {
                Some("\n") => out.push('\n'),
                Some(w) => {
                    if !out.is_empty() && !out.ends_with('\n') {
                        out.push(' ');
                    }
                    out.push_str(w);
                }
                None => out.push_str(" <?>"),
            }
        }
        out
    }

    /// Generates whole lines from `seed` until at least `min_tokens` tokens.
    pub fn generate(&self, seed: u64, min_tokens: usize) -> Corpus {
        let mut rng = Rng::new(seed);
        let mut tokens: Vec<u16> = Vec::with_capacity(min_tokens + 256);
        let mut entropy = 0.0f64;
        let mut lines = 0;
        let mut stack: Vec<Item> = Vec::with_capacity(64);
        while tokens.len() < min_tokens {
            stack.push(Item::Rule(self.start));
            while let Some(item) = stack.pop() {
                match item {
                    Item::Token(t) => tokens.push(t),
                    Item::Rule(r) => {
                        let rule = &self.rules[r];
                        entropy += rule.entropy;
                        let u = rng.next_f64();
                        let k = rule
                            .cumulative
                            .iter()
                            .position(|&c| u < c)
                            .unwrap_or(rule.alts.len() - 1);
                        stack.extend(rule.alts[k].items.iter().rev());
                    }
                    Item::Arithmetic { max } => {
                        entropy += self.arithmetic(max, &mut rng, &mut tokens)
                    }
                }
            }
            lines += 1;
        }
        Corpus {
            tokens: Arc::new(tokens),
            choice_entropy_nats: entropy,
            lines,
            vocab_len: self.vocab.len(),
        }
    }

    /// Emits one fact; returns the entropy of its three choices.
    fn arithmetic(&self, max: u32, rng: &mut Rng, out: &mut Vec<u16>) -> f64 {
        let Some(tk) = self.arith else { return 0.0 };
        let n = max as u64 + 1;
        let minus = rng.below(2) == 1;
        let a = rng.below(n);
        let (b, b_choices) = if minus {
            (rng.below(a + 1), a + 1)
        } else {
            (rng.below(n), n)
        };
        let c = if minus { a - b } else { a + b };
        let digits = |x: u64, out: &mut Vec<u16>| {
            for ch in x.to_string().bytes() {
                out.push(tk.digits[(ch - b'0') as usize]);
            }
        };
        digits(a, out);
        out.push(if minus { tk.minus } else { tk.plus });
        digits(b, out);
        out.push(tk.equals);
        digits(c, out);
        std::f64::consts::LN_2 + (n as f64).ln() + (b_choices as f64).ln()
    }

    /// Checks the property the loss floor rests on: within every rule, the
    /// alternatives' first tokens are disjoint (LL(1) with no empty
    /// alternative), so the choices can be parsed back from the tokens.
    ///
    /// # Errors
    /// The rule and the token two alternatives share, or a left recursion.
    pub fn check_ll1(&self) -> Result<(), String> {
        let mut memo: Vec<Option<BTreeSet<u16>>> = vec![None; self.rules.len()];
        for r in 0..self.rules.len() {
            let mut seen = BTreeSet::new();
            for alt in &self.rules[r].alts {
                let first = self.first_of_item(alt.items[0], &mut memo, &mut Vec::new())?;
                if let Some(t) = first.iter().find(|t| seen.contains(*t)) {
                    return Err(format!(
                        "rule {}: two alternatives can start with token '{}'",
                        self.rules[r].name, self.vocab[*t as usize]
                    ));
                }
                seen.extend(first);
            }
        }
        Ok(())
    }

    fn first_of_item(
        &self,
        item: Item,
        memo: &mut Vec<Option<BTreeSet<u16>>>,
        visiting: &mut Vec<usize>,
    ) -> Result<BTreeSet<u16>, String> {
        match item {
            Item::Token(t) => Ok(BTreeSet::from([t])),
            Item::Arithmetic { .. } => Ok(self
                .arith
                .map(|a| a.digits.iter().copied().collect())
                .unwrap_or_default()),
            Item::Rule(r) => {
                if let Some(f) = &memo[r] {
                    return Ok(f.clone());
                }
                if visiting.contains(&r) {
                    return Err(format!("rule {} is left-recursive", self.rules[r].name));
                }
                visiting.push(r);
                let mut first = BTreeSet::new();
                for alt in &self.rules[r].alts {
                    first.extend(self.first_of_item(alt.items[0], memo, visiting)?);
                }
                visiting.pop();
                memo[r] = Some(first.clone());
                Ok(first)
            }
        }
    }
}

/// The embedded corpus, generated once per process.
pub fn default_corpus() -> &'static (Grammar, Corpus) {
    static CORPUS: OnceLock<(Grammar, Corpus)> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let g = default_grammar();
        let c = g.generate(CORPUS_SEED, DEFAULT_TOKENS);
        (g, c)
    })
}

pub(crate) fn open_default(vocab_size: usize) -> Result<Inner, ModelError> {
    let (_, corpus) = default_corpus();
    if vocab_size < corpus.vocab_len {
        return Err(ModelError::VocabTooSmall {
            source: "the embedded corpus".into(),
            vocab_size,
            needed: corpus.vocab_len,
        });
    }
    let n = corpus.tokens.len();
    let val = val_tokens(n);
    let floor = corpus.loss_floor_nats();
    let description = format!(
        "embedded corpus (grammar + arithmetic): {n} tokens, {} token types (of V = {vocab_size}), \
         {} train / {val} val (last {:.0}%), entropy floor {floor:.4} nats/token",
        corpus.vocab_len,
        n - val,
        VAL_FRACTION * 100.0
    );
    let source = Source {
        tokens: Tokens::Owned(corpus.tokens.clone()),
        train: 0..n - val,
        val: n - val..n,
    };
    Ok(Inner {
        sources: vec![source],
        vocab_size,
        description,
        loss_floor: Some(floor),
    })
}

/// Nouns of one class: (singular, plural) pairs and the adjectives that fit them.
struct NounClass {
    label: &'static str,
    nouns: &'static [(&'static str, &'static str)],
    adjectives: &'static [&'static str],
}

const PEOPLE: NounClass = NounClass {
    label: "people",
    nouns: &[
        ("man", "men"),
        ("woman", "women"),
        ("child", "children"),
        ("teacher", "teachers"),
        ("farmer", "farmers"),
        ("doctor", "doctors"),
    ],
    adjectives: &["tall", "kind", "young", "busy"],
};
const ANIMALS: NounClass = NounClass {
    label: "animals",
    nouns: &[
        ("dog", "dogs"),
        ("cat", "cats"),
        ("bird", "birds"),
        ("horse", "horses"),
        ("fox", "foxes"),
        ("cow", "cows"),
    ],
    adjectives: &["small", "brown", "hungry", "wild"],
};
const FOOD: NounClass = NounClass {
    label: "food",
    nouns: &[
        ("apple", "apples"),
        ("cake", "cakes"),
        ("egg", "eggs"),
        ("pear", "pears"),
        ("fish", "fishes"),
    ],
    adjectives: &["fresh", "sweet", "red", "warm"],
};
const TEXTS: NounClass = NounClass {
    label: "texts",
    nouns: &[
        ("book", "books"),
        ("letter", "letters"),
        ("story", "stories"),
        ("poem", "poems"),
    ],
    adjectives: &["long", "funny", "sad", "short"],
};
const THINGS: NounClass = NounClass {
    label: "things",
    nouns: &[
        ("ball", "balls"),
        ("box", "boxes"),
        ("stone", "stones"),
        ("hat", "hats"),
        ("cup", "cups"),
    ],
    adjectives: &["heavy", "blue", "round", "broken"],
};

/// Verbs that take the same kinds of object: (singular, plural) forms.
struct VerbGroup {
    label: &'static str,
    verbs: &'static [(&'static str, &'static str)],
    objects: &'static [&'static NounClass],
    /// Whether a name (alice, bob, ...) can be the object.
    names: bool,
}

const EAT: VerbGroup = VerbGroup {
    label: "eat",
    verbs: &[("eats", "eat"), ("wants", "want")],
    objects: &[&FOOD],
    names: false,
};
const READ: VerbGroup = VerbGroup {
    label: "read",
    verbs: &[("reads", "read"), ("writes", "write")],
    objects: &[&TEXTS],
    names: false,
};
const CARRY: VerbGroup = VerbGroup {
    label: "carry",
    verbs: &[("carries", "carry"), ("drops", "drop")],
    objects: &[&THINGS, &FOOD],
    names: false,
};
const CHASE: VerbGroup = VerbGroup {
    label: "chase",
    verbs: &[("chases", "chase"), ("follows", "follow")],
    objects: &[&ANIMALS, &PEOPLE],
    names: true,
};
const SEE: VerbGroup = VerbGroup {
    label: "see",
    verbs: &[("sees", "see"), ("finds", "find")],
    objects: &[&PEOPLE, &ANIMALS, &FOOD, &TEXTS, &THINGS],
    names: true,
};
const MEET: VerbGroup = VerbGroup {
    label: "meet",
    verbs: &[("helps", "help"), ("meets", "meet")],
    objects: &[&PEOPLE],
    names: true,
};

/// The default grammar. Every rule's alternatives start with disjoint tokens
/// (checked by a test), which is what makes the loss floor exact:
///
/// ```text
/// line    → sentence "\n" | fact "\n"                (0.7 / 0.3)
/// sentence→ det_sg subj_sg | det_pl subj_pl | name vp(people, sg)
/// subj_n  → [adj_c] noun_c_n vp(c, n)                c ∈ {people, animals}
/// vp(c,n) → verb_n object(group) close               groups the class can do
/// object  → det_sg [adj] noun_sg | det_pl [adj] noun_pl | name
/// close   → "." | prep "the" place "."
/// fact    → a (+|-) b = c                             one-digit a, b
/// ```
fn default_grammar() -> Grammar {
    let mut g = GrammarBuilder::new();
    let newline = g.tok("\n");
    let period = g.tok(".");
    let the_place = g.tok("the");

    // Singular and plural determiners are disjoint so the number is read from
    // the first token of a noun phrase.
    let det_sg = g.rule("det_sg");
    g.words(det_sg, &["the", "a", "this", "every", "my"]);
    let det_pl = g.rule("det_pl");
    g.words(det_pl, &["some", "these", "many", "two", "those"]);
    let name = g.rule("name");
    g.words(name, &["alice", "bob", "carol", "dave", "eve", "frank"]);
    let prep = g.rule("prep");
    g.words(prep, &["in", "near", "behind", "at"]);
    let place = g.rule("place");
    g.words(
        place,
        &[
            "garden", "house", "river", "park", "market", "school", "forest", "town",
        ],
    );
    let close = g.rule("close");
    g.alt(close, 0.6, &[period]);
    g.alt(
        close,
        0.4,
        &[Item::Rule(prep), the_place, Item::Rule(place), period],
    );

    // Nouns and adjectives of each class and number, as rules.
    let mut noun_rules: HashMap<(&str, usize), (usize, usize)> = HashMap::new();
    for class in [&PEOPLE, &ANIMALS, &FOOD, &TEXTS, &THINGS] {
        let adj = g.rule(&format!("{}_adj", class.label));
        g.words(adj, class.adjectives);
        for num in 0..2 {
            let noun = g.rule(&format!("{}_noun_{num}", class.label));
            let words: Vec<&str> = class
                .nouns
                .iter()
                .map(|p| if num == 0 { p.0 } else { p.1 })
                .collect();
            g.words(noun, &words);
            noun_rules.insert((class.label, num), (adj, noun));
        }
    }
    // [adj] noun of any of `classes`, then `tail`: one alternative per class
    // with and without an adjective (adjective sets are disjoint per class).
    let noun_phrase_tail = |g: &mut GrammarBuilder,
                            name: String,
                            classes: &[&NounClass],
                            num: usize,
                            tail: &[Item]| {
        let r = g.rule(&name);
        for class in classes {
            let (adj, noun) = noun_rules[&(class.label, num)];
            let with_adj: Vec<Item> = [Item::Rule(adj), Item::Rule(noun)]
                .iter()
                .chain(tail)
                .copied()
                .collect();
            let without: Vec<Item> = [Item::Rule(noun)].iter().chain(tail).copied().collect();
            g.alt(r, 0.3, &with_adj);
            g.alt(r, 0.7, &without);
        }
        r
    };

    let mut object_rules = HashMap::new();
    for group in [&EAT, &READ, &CARRY, &CHASE, &SEE, &MEET] {
        let nb_sg = noun_phrase_tail(
            &mut g,
            format!("{}_obj_sg", group.label),
            group.objects,
            0,
            &[],
        );
        let nb_pl = noun_phrase_tail(
            &mut g,
            format!("{}_obj_pl", group.label),
            group.objects,
            1,
            &[],
        );
        let obj = g.rule(&format!("{}_obj", group.label));
        g.alt(obj, 0.6, &[Item::Rule(det_sg), Item::Rule(nb_sg)]);
        g.alt(obj, 0.4, &[Item::Rule(det_pl), Item::Rule(nb_pl)]);
        if group.names {
            g.alt(obj, 0.3, &[Item::Rule(name)]);
        }
        object_rules.insert(group.label, obj);
    }
    // What each subject class does, with relative weights per verb group.
    let doings: [(&NounClass, &[(&VerbGroup, f64)]); 2] = [
        (
            &PEOPLE,
            &[
                (&EAT, 2.0),
                (&READ, 2.0),
                (&CARRY, 1.5),
                (&CHASE, 0.5),
                (&SEE, 1.5),
                (&MEET, 1.5),
            ],
        ),
        (&ANIMALS, &[(&EAT, 2.0), (&CHASE, 2.0), (&SEE, 1.0)]),
    ];
    let mut vp_rules = HashMap::new();
    for (class, groups) in doings {
        for num in 0..2 {
            let vp = g.rule(&format!("{}_vp_{num}", class.label));
            for (group, weight) in groups {
                for (k, forms) in group.verbs.iter().enumerate() {
                    let verb = g.tok(if num == 0 { forms.0 } else { forms.1 });
                    let obj = Item::Rule(object_rules[group.label]);
                    g.alt(vp, weight / (k + 1) as f64, &[verb, obj, Item::Rule(close)]);
                }
            }
            vp_rules.insert((class.label, num), vp);
        }
    }
    let mut subjects = [0usize; 2];
    for (num, slot) in subjects.iter_mut().enumerate() {
        let r = g.rule(&format!("subject_rest_{num}"));
        for (class, weight) in [(&PEOPLE, 0.6), (&ANIMALS, 0.4)] {
            let (adj, noun) = noun_rules[&(class.label, num)];
            let vp = Item::Rule(vp_rules[&(class.label, num)]);
            g.alt(r, weight * 0.3, &[Item::Rule(adj), Item::Rule(noun), vp]);
            g.alt(r, weight * 0.7, &[Item::Rule(noun), vp]);
        }
        *slot = r;
    }
    let sentence = g.rule("sentence");
    g.alt(
        sentence,
        0.5,
        &[Item::Rule(det_sg), Item::Rule(subjects[0])],
    );
    g.alt(
        sentence,
        0.3,
        &[Item::Rule(det_pl), Item::Rule(subjects[1])],
    );
    g.alt(
        sentence,
        0.2,
        &[Item::Rule(name), Item::Rule(vp_rules[&("people", 0)])],
    );

    let fact = g.arithmetic(9);
    let line = g.rule("line");
    g.alt(line, 0.7, &[Item::Rule(sentence), newline]);
    g.alt(line, 0.3, &[fact, newline]);
    // The grammar above is fixed; building it can only fail by a programming error.
    match g.build(line) {
        Ok(grammar) => grammar,
        Err(e) => unreachable!("the default grammar is malformed: {e}"),
    }
}
