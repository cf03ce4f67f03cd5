"""VQA answers: their normalisation and accuracy exactly as the official VQA evaluation code
computes them (GT-Vision-Lab/VQA, ``vqaEval.py``), and the soft training targets derived from it.
The data side (targets, the answer vocabulary) and the evaluation (:mod:`vlbert_d2.evaluation`)
both use them.

Accuracy of a predicted answer against the 10 human answers: for each of the 10 leave-one-out
subsets of 9 answers, ``min(1, #matches / 3)``; the question's accuracy is their mean. All
answers are first cleaned of tabs, newlines and outer spaces. Then, only when the human answers
are not all identical, the prediction and the human answers are normalised (punctuation, then
number words to digits, articles dropped, contractions restored); identical human answers are
compared as they are. This is the current official code (since its 2021 fix "Fixed processing
answers bug"), kept quirks included for identical figures.
"""
import re

# The official tables (data, so they are reproduced as they are, quirks included: capitalised
# keys never match since words are lower-cased first, and "somebody'd" maps to "somebodyd").
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
               "@", "`", ",", "?", "!"]
# The official pattern: its "(?!<=\d)" is a lookahead, not a lookbehind, so it removes every
# period not followed by a digit. The official call passes re.UNICODE (32) as the count.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIOD_MAX_COUNT = re.UNICODE
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(\,)(\d)")


def process_punctuation(text):
    """The official punctuation step: a mark next to a space (or any mark when the text has a
    comma between digits) is removed, others become a space; then periods go (not decimals)."""
    out = text
    strip_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for p in PUNCTUATION:
        if strip_all or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX_COUNT)


def process_digit_article(text):
    """The official word step: lower-case, number words to digits, drop articles, restore
    contractions ("dont" -> "don't")."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def _clean(text):
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(answer):
    """The full normalisation the official code applies to answers (when the human answers
    differ)."""
    return process_digit_article(process_punctuation(_clean(answer)))


def vqa_accuracy(prediction, gt_answers):
    """Official accuracy (in [0, 1]) of one predicted answer against the human answers.

    Args:
        prediction (str): the predicted answer, raw.
        gt_answers (list[str]): the (10) human answers, raw.
    """
    prediction = _clean(prediction)
    gt_answers = [_clean(a) for a in gt_answers]
    if len(set(gt_answers)) > 1:
        gt_answers = [process_digit_article(process_punctuation(a)) for a in gt_answers]
        prediction = process_digit_article(process_punctuation(prediction))
    n = len(gt_answers)
    matches = sum(a == prediction for a in gt_answers)
    # Leaving out a matching answer leaves matches - 1 matches, any other leaves matches.
    total = sum(min(1.0, (matches - (a == prediction)) / 3) for a in gt_answers)
    return total / n if n else 0.0


def soft_scores(gt_answers):
    """Soft training targets: every distinct normalised human answer with its official
    accuracy, the mean over the leave-one-out subsets of min(1, matches / 3). Unlike the
    evaluation, the answers are always fully normalised (as BUTD-style VQA training does), so
    that surface variants of an answer ("Two", "2") count for the same vocabulary entry.

    Args:
        gt_answers (list[str]): the human answers, raw (fully normalised here).

    Returns:
        dict[str, float]: normalised answer -> score in (0, 1].
    """
    answers = [normalize_answer(a) for a in gt_answers]
    n = len(answers)
    scores = {}
    for candidate in set(answers):
        matches = sum(a == candidate for a in answers)
        scores[candidate] = sum(min(1.0, (matches - (a == candidate)) / 3) for a in answers) / n
    return scores
