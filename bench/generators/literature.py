"""A second, independent corruption model: person files with identifier errors as the record
linkage literature reports them (not synth's, not bench/linkage_1m.py's).

Nothing here imports `synth` or `bench/linkage_1m.py`: names, places, households and every error
process are this module's own, so a linker tuned on the project's generators meets errors it
was not designed around. All values are synthetic.

Sources the error processes follow (rates are chosen within the ranges these report; they are
this generator's parameters, not figures quoted from any one paper):
* Damerau F. J. (1964) A technique for computer detection and correction of spelling errors.
  CACM 7(3):171-176 - about 80% of misspellings are one insertion, deletion, substitution or
  transposition; Kukich K. (1992) Techniques for automatically correcting words in text. ACM
  Computing Surveys 24(4):377-439 - substitutions are mostly of keyboard neighbours, and first
  letters are rarely wrong. -> `_typo`: one edit, substitution by a QWERTY neighbour.
* Christen P., Pudjijono A. (2009) Accurate synthetic generation of realistic personal
  information. PAKDD, LNCS 5476:507-514; Christen P., Vatsalan D. (2013) Flexible and
  extensible generation and corruption of personal data (GeCo). CIKM 2013:1165-1168 - typing,
  phonetic (ph/f, ou/ow, -son/-sen ...) and missing-value corruptors, several per record,
  nickname and name-variant look-ups, dependent attributes (a household shares an address).
* Winkler W. E. (2006) Overview of record linkage and current research directions. US Census
  Bureau, Statistical Research Report RRS2006/02 - nicknames, name variants and surname change
  are the main sources of name disagreement among true matches.
* Hagger-Johnson G., Harron K., Gonzalez-Izquierdo A. et al. (2015) Identifying possible false
  matches in anonymized hospital administrative data without patient identifiers. Health
  Services Research 50(4):1162-1178; Hagger-Johnson G. et al. (2017) Probabilistic linkage to
  enhance deterministic algorithms and reduce data linkage errors in hospital administrative
  data. J Innov Health Inform 24(2):891 - date-of-birth errors: day/month transposed, default
  day or month (01), one digit wrong, year off by one or ten; twins and multiple births
  (same date of birth, surname and address) as the classic false matches.
* Harron K., Dibben C., Boyd J. et al. (2017) Challenges in administrative data linkage for
  research. Big Data & Society 4(2) - linkage error differs by group: women (surname change on
  marriage), people who move, and people sharing a household.
* Office for National Statistics, Internal migration (annual): roughly one person in ten moves
  address in a year, most moves are short (within the same local area).

The error model (right file; the left file gets a lighter version of each, errors
independent per record and per field, several can hit one record):
* forename: diminutive or variant from this module's own list (`VARIANTS`, ~90 English
  given names) 10% of those that have one; typing error 3%; initial only 1%; missing 2%.
* surname: changed on marriage 6% of women aged 20-60 (a new surname, or double-barrelled
  with the old one 1 in 5); phonetic variant 1.5%; typing error 3%; missing 0.5%.
* date of birth: day and month transposed 1.5% (day <= 12); day set to 01 0.5%, day and month
  to 01/01 0.3%; year off by one 0.7% or by ten 0.3%; one digit typed wrong 1%; missing 1%.
  Written DD/MM/YYYY (Haven and Splink both read it).
* address: moved 10% (60% to another street in the same postcode district and town, 40% to
  another district, which may be in another town), then the new postcode and address; street
  type abbreviated (Road -> Rd) 15%; typing error in the address line 4%; house number
  dropped 2%; address line missing 3%.
* postcode: one character typed wrong or two transposed 2%; missing 4%; lower case / no space
  8% (harmless after normalisation).
* town: missing 15%; written as the district's locality instead of the post town 5%.
* sex: missing 1%; wrong 0.3%.
Population: households of 1-6 (mean ~2.4) sharing an address, postcode and (85%) a surname;
2.5% of households with children contain twins (same date of birth, surname, address; their
forenames often share an initial). Postcode districts belong to post towns (several districts
per town), so town and postcode are dependent, as in real data.

Usage (as a library): `left, right, rates = files(n, seed)`; columns person_id, forename,
surname, date_of_birth, sex, postcode, address, town (all text, blank = missing).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# ---------------------------------------------------------------------------------------------
# Vocabularies (this module's own)

def _words(text: str) -> list[str]:
    return text.split()



MALE = _words("James John Robert Michael William David Richard Joseph Thomas Charles Christopher "
        "Daniel Matthew Anthony Mark Donald Steven Paul Andrew Joshua Kenneth Kevin Brian George "
        "Edward Ronald Timothy Jason Jeffrey Ryan Jacob Gary Nicholas Eric Jonathan Stephen "
        "Larry Justin Scott Brandon Benjamin Samuel Gregory Alexander Frank Patrick Raymond Jack "
        "Dennis Jerry Tyler Aaron Henry Adam Douglas Nathan Peter Zachary Kyle Walter Harold "
        "Jeremy Ethan Carl Keith Roger Gerald Christian Terry Sean Arthur Austin Noah Lawrence "
        "Jesse Joe Bryan Billy Jordan Albert Dylan Bruce Willie Gabriel Alan Juan Logan Wayne "
        "Ralph Roy Eugene Randy Vincent Russell Louis Philip Bobby Johnny Bradley Declan Rhys "
        "Owain Gethin Callum Fraser Angus Hamish Niall Ciaran Oisin Tariq Imran Kamran Farhan "
        "Ravi Deepak Sunil Amit Kwame Kofi Tunde Emeka Jakub Lukasz Pawel Mateusz")
FEMALE = _words("Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Nancy "
                "Lisa "
          "Margaret Betty Sandra Ashley Dorothy Kimberly Emily Donna Michelle Carol Amanda "
          "Melissa Deborah Stephanie Rebecca Laura Sharon Cynthia Kathleen Amy Shirley Angela "
          "Helen Anna Brenda Pamela Nicole Samantha Katherine Emma Ruth Christine Catherine "
          "Debra Rachel Carolyn Janet Virginia Maria Heather Diane Julie Joyce Victoria Kelly "
          "Christina Joan Evelyn Lauren Judith Olivia Frances Martha Cheryl Megan Andrea Hannah "
          "Jacqueline Ann Jean Alice Kathryn Gloria Teresa Doris Sara Janice Julia Marie Madison "
          "Grace Judy Theresa Beverly Denise Marilyn Amber Danielle Abigail Brittany Rose Diana "
          "Natalie Sophie Charlotte Isobel Eilidh Niamh Siobhan Aoife Bethan Carys Ffion Nia "
          "Saima Nadia Farah Priya Anita Sunita Ngozi Abena Chioma Agnieszka Katarzyna Magdalena "
          "Zofia")
# Diminutives and variants (Withycombe-style English usage); deliberately this module's own.
VARIANTS: dict[str, tuple[str, ...]] = {
    "James": ("Jim", "Jimmy", "Jamie"), "John": ("Jack", "Johnny", "Jon"),
    "Robert": ("Rob", "Bob", "Bobby", "Robbie", "Bert"), "Michael": ("Mike", "Mick", "Mickey"),
    "William": ("Will", "Bill", "Billy", "Liam"), "David": ("Dave", "Davy"),
    "Richard": ("Rick", "Dick", "Richie"), "Joseph": ("Joe", "Joey"), "Thomas": ("Tom", "Tommy"),
    "Charles": ("Charlie", "Chuck", "Chas"), "Christopher": ("Chris", "Kit"),
    "Daniel": ("Dan", "Danny"), "Matthew": ("Matt", "Matty"), "Anthony": ("Tony", "Ant"),
    "Donald": ("Don", "Donnie"), "Steven": ("Steve", "Stevie"), "Stephen": ("Steve", "Stevie"),
    "Andrew": ("Andy", "Drew"), "Joshua": ("Josh",), "Kenneth": ("Ken", "Kenny"),
    "Edward": ("Ed", "Eddie", "Ted", "Ned"), "Ronald": ("Ron", "Ronnie"), "Timothy": ("Tim",),
    "Jeffrey": ("Jeff",), "Nicholas": ("Nick", "Nicky"), "Jonathan": ("Jon", "Jonny"),
    "Lawrence": ("Larry", "Laurie"), "Benjamin": ("Ben", "Benny"), "Samuel": ("Sam", "Sammy"),
    "Gregory": ("Greg",), "Alexander": ("Alex", "Sandy", "Alec"), "Frank": ("Frankie",),
    "Patrick": ("Pat", "Paddy"), "Raymond": ("Ray",), "Gerald": ("Gerry",),
    "Henry": ("Harry", "Hal"), "Peter": ("Pete",), "Zachary": ("Zach",), "Walter": ("Wally",),
    "Harold": ("Harry", "Hal"), "Jeremy": ("Jerry",), "Arthur": ("Art", "Artie"),
    "Albert": ("Al", "Bert"), "Philip": ("Phil",), "Vincent": ("Vince",), "Louis": ("Lou",),
    "Bradley": ("Brad",), "Douglas": ("Doug", "Dougie"), "Nathan": ("Nate", "Nat"),
    "Eugene": ("Gene",), "Russell": ("Russ",), "Mary": ("Molly", "Polly", "Mae"),
    "Patricia": ("Pat", "Patsy", "Trish"), "Jennifer": ("Jenny", "Jen"),
    "Elizabeth": ("Liz", "Beth", "Betty", "Lizzie", "Eliza", "Elsie"),
    "Barbara": ("Barb", "Babs"), "Susan": ("Sue", "Susie"), "Jessica": ("Jess", "Jessie"),
    "Sarah": ("Sally", "Sadie"), "Margaret": ("Maggie", "Peggy", "Meg", "Madge", "Greta"),
    "Dorothy": ("Dot", "Dolly", "Dottie"), "Kimberly": ("Kim",), "Deborah": ("Debbie", "Deb"),
    "Stephanie": ("Steph",), "Rebecca": ("Becky", "Becca"), "Cynthia": ("Cindy",),
    "Kathleen": ("Kath", "Kathy", "Kay"), "Amanda": ("Mandy",), "Pamela": ("Pam",),
    "Samantha": ("Sam", "Sammy"), "Katherine": ("Kate", "Katie", "Kitty"),
    "Catherine": ("Cath", "Cathy", "Kate"), "Christine": ("Chris", "Chrissie", "Tina"),
    "Victoria": ("Vicky", "Tori"), "Frances": ("Fran", "Fanny"), "Judith": ("Judy", "Jude"),
    "Jacqueline": ("Jackie", "Jacqui"), "Theresa": ("Tess", "Terri"), "Teresa": ("Tess",),
    "Abigail": ("Abby", "Gail"), "Natalie": ("Nat",), "Charlotte": ("Lottie", "Charlie"),
    "Virginia": ("Ginny",), "Beverly": ("Bev",), "Danielle": ("Dani",), "Ann": ("Annie", "Nan"),
    "Hannah": ("Anna",), "Helen": ("Nell", "Ellie"), "Diana": ("Di",), "Sophie": ("Sophia",),
    "Isobel": ("Izzy", "Isabel", "Bella"), "Andrea": ("Andie",), "Carolyn": ("Carol", "Lyn"),
}
SURNAMES = _words("Smith Jones Taylor Brown Williams Wilson Johnson Davies Robinson Wright "
                  "Thompson "
            "Evans Walker White Roberts Green Hall Wood Jackson Clarke Patel Khan Lewis James "
            "Phillips Mason Mitchell Rose Davis Rodriguez Cox Alexander Morris King Cooper "
            "Harris Martin Ward Turner Hill Moore Clark Edwards Hughes Baker Allen Lee Scott "
            "Morgan Young Harrison Parker Murphy Hussain Bennett Price Bell Griffiths Kelly "
            "Shaw Cook Richardson Carter Marshall Gray Chapman Collins Ahmed Kaur Singh Begum "
            "Ali Murray Watson Kennedy Anderson Graham Stewart Reid Campbell Macdonald Ross "
            "Fraser Paterson Hamilton O'Brien O'Connor Byrne Doyle Nowak Kowalski Okafor "
            "Mensah Adeyemi Nguyen Chen Wong")
_SUR_A = _words("Ash Brad Cal Dun Eld Fen Gil Hax Ing Kel Lan Mel Nor Orm Pem Quen Rad Sel Tarl "
          "Ull Ver Wes Yar Bram Crow Dray Fal Grim Holl Lud Marl Ness Penn Rook Stam Thurl "
          "Wray Aske Blen Cork")
_SUR_B = _words("by ford ham ley more ton well wick worth shaw stone field hurst thorpe cott dale "
          "den ridge low combe")
STREET_WORDS = _words("Oak Elm Ash Beech Birch Cedar Maple Willow Church Mill Station School Park "
                "Victoria Albert Queen King Manor Grange Meadow Orchard Chapel Market Bridge "
                "High North South West East New Green Spring Moor Hollin Lime Poplar Rowan "
                "Hawthorn Holly Laurel Cherry Chestnut Sycamore Alder Clifton Stanley Derby "
                "Grosvenor Windsor Balmoral Rutland Cavendish Belgrave")
STREET_TYPES = (("Road", "Rd"), ("Street", "St"), ("Avenue", "Ave"), ("Lane", "Ln"),
                ("Close", "Cl"), ("Drive", "Dr"), ("Grove", "Gr"), ("Crescent", "Cres"),
                ("Terrace", "Ter"), ("Way", "Way"), ("Gardens", "Gdns"), ("Place", "Pl"))
# post town -> (postcode area, district numbers, localities used instead of the town)
TOWNS: dict[str, tuple[str, tuple[int, ...], tuple[str, ...]]] = {
    "Manchester": ("M", (1, 4, 8, 9, 11, 12, 13, 14, 15, 16, 18, 19, 20, 21, 22, 23),
                   ("Didsbury", "Withington", "Chorlton", "Levenshulme")),
    "Salford": ("M", (3, 5, 6, 7, 27, 28, 30), ("Eccles", "Swinton", "Walkden")),
    "Stockport": ("SK", (1, 2, 3, 4, 5, 6, 7, 8), ("Heaton Moor", "Marple", "Bramhall")),
    "Oldham": ("OL", (1, 2, 4, 8, 9), ("Chadderton", "Royton")),
    "Sheffield": ("S", (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 17, 20),
                  ("Hillsborough", "Crookes", "Ecclesall", "Darnall")),
    "Rotherham": ("S", (60, 61, 62, 63, 65, 66), ("Rawmarsh", "Wath")),
    "Nottingham": ("NG", (1, 2, 3, 5, 6, 7, 8, 9, 11), ("Beeston", "Bulwell", "Arnold")),
    "Derby": ("DE", (1, 3, 21, 22, 23, 24), ("Allestree", "Mickleover")),
}
KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
_NEIGHBOURS: dict[str, str] = {}
for _r, _row in enumerate(KEYBOARD):
    for _c, _ch in enumerate(_row):
        near = [_row[j] for j in (_c - 1, _c + 1) if 0 <= j < len(_row)]
        for rr in (_r - 1, _r + 1):
            if 0 <= rr < len(KEYBOARD):
                near += [KEYBOARD[rr][j] for j in (_c - 1, _c, _c + 1)
                         if 0 <= j < len(KEYBOARD[rr])]
        _NEIGHBOURS[_ch] = "".join(near)
PHONETIC = (("ph", "f"), ("ck", "k"), ("ou", "ow"), ("son", "sen"), ("ey", "y"), ("ie", "y"),
            ("th", "t"), ("ll", "l"), ("mm", "m"), ("nn", "n"), ("ie", "ei"), ("c", "k"),
            ("y", "i"), ("ei", "ie"), ("s", "z"))
DAYS_PER_YEAR = 365.2425
REFERENCE = np.datetime64("2024-04-01", "D")
EPOCH = np.datetime64("1970-01-01", "D")


# ---------------------------------------------------------------------------------------------
# Corruptors (one value at a time; the files are at most a few hundred thousand rows)

def _typo(rng: np.random.Generator, text: str) -> str:
    """One edit (Damerau): keyboard-neighbour substitution 45%, deletion 20%, insertion 20%,
    transposition 15%; the first character is kept (Kukich)."""
    if len(text) < 2:
        return text
    p = int(rng.integers(1, len(text)))
    op = rng.random()
    ch = text[p]
    lower = ch.lower()
    if op < 0.45 and lower in _NEIGHBOURS:
        new = _NEIGHBOURS[lower][int(rng.integers(0, len(_NEIGHBOURS[lower])))]
        return text[:p] + (new.upper() if ch.isupper() else new) + text[p + 1:]
    if op < 0.65:
        return text[:p] + text[p + 1:]
    if op < 0.85:
        near = _NEIGHBOURS.get(lower, "e")
        return text[:p] + near[int(rng.integers(0, len(near)))] + text[p:]
    if p + 1 < len(text):
        return text[:p] + text[p + 1] + text[p] + text[p + 2:]
    return text[:p - 1] + text[p] + text[p - 1]


def _phonetic(rng: np.random.Generator, text: str) -> str:
    """A sound-alike spelling (GeCo's phonetic corruptor, simplified): first rule that applies,
    rules tried in random order."""
    low = text.lower()
    for i in rng.permutation(len(PHONETIC)):
        a, b = PHONETIC[i]
        pos = low.find(a, 1)
        if pos > 0:
            out = low[:pos] + b + low[pos + len(a):]
            return out[:1].upper() + out[1:]
    return _typo(rng, text)


def _surname_tail() -> list[str]:
    return [a + b for a in _SUR_A for b in _SUR_B]


def _zipf_pick(rng: np.random.Generator, values: list[str], size: int, s: float = 1.0
               ) -> np.ndarray:
    w = 1.0 / np.arange(1, len(values) + 1) ** s
    return np.asarray(values, dtype=object)[rng.choice(len(values), size=size, p=w / w.sum())]


def _postcode(rng: np.random.Generator, area: str, district: int) -> str:
    letters = "ABDEFGHJLNPQRSTUWXYZ"
    return (f"{area}{district} {int(rng.integers(0, 10))}"
            f"{letters[int(rng.integers(0, 20))]}{letters[int(rng.integers(0, 20))]}")


def _address(rng: np.random.Generator) -> tuple[int, str, int]:
    """(house number, street name, street type index)."""
    number = int(rng.integers(1, 40) if rng.random() < 0.7 else rng.integers(40, 300))
    street = STREET_WORDS[int(rng.integers(0, len(STREET_WORDS)))]
    return number, street, int(rng.integers(0, len(STREET_TYPES)))


def _place(rng: np.random.Generator, town: str | None = None) -> tuple[str, str, int]:
    """(town, area, district) drawn with a town's districts equally likely."""
    if town is None:
        towns = list(TOWNS)
        weights = np.array([len(TOWNS[t][1]) for t in towns], dtype=float)
        town = towns[int(rng.choice(len(towns), p=weights / weights.sum()))]
    area, districts, _ = TOWNS[town]
    return town, area, int(districts[int(rng.integers(0, len(districts)))])


def population(size: int, seed: int) -> pd.DataFrame:
    """Persons in households; one row per person, clear values (before any error)."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    tail = _surname_tail()
    surnames_head = SURNAMES
    hh = 0
    while len(rows) < size:
        k = int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.29, 0.35, 0.15, 0.13, 0.06, 0.02]))
        town, area, district = _place(rng)
        postcode = _postcode(rng, area, district)
        number, street, stype = _address(rng)
        family = (_zipf_pick(rng, surnames_head, 1)[0] if rng.random() < 0.6
                  else tail[int(rng.integers(0, len(tail)))])
        adult_age = float(rng.uniform(20, 90))
        twins_at = int(rng.integers(2, k)) if k >= 4 and rng.random() < 0.025 * 2 else -1
        prev_dob = None
        prev_fore = None
        for j in range(k):
            male = bool(rng.random() < 0.49)
            if j < 2:
                age = max(18.0, adult_age + float(rng.normal(0, 4)))
            else:
                age = float(rng.uniform(0, max(1.0, min(adult_age - 18, 30))))
            dob = REFERENCE - np.timedelta64(int(age * DAYS_PER_YEAR), "D")
            names = MALE if male else FEMALE
            fore = _zipf_pick(rng, names, 1, s=0.8)[0]
            if j == twins_at and prev_dob is not None:
                dob = prev_dob
                initial = [n for n in names if n[0] == str(prev_fore)[0] and n != prev_fore]
                if initial and rng.random() < 0.5:
                    fore = initial[int(rng.integers(0, len(initial)))]
            sur = family if rng.random() < 0.85 else (
                _zipf_pick(rng, surnames_head, 1)[0] if rng.random() < 0.6
                else tail[int(rng.integers(0, len(tail)))])
            rows.append({"forename": fore, "surname": sur, "dob": dob, "male": male,
                         "town": town, "area": area, "district": district,
                         "postcode": postcode, "number": number, "street": street,
                         "stype": stype, "household": hh})
            prev_dob, prev_fore = dob, fore
        hh += 1
    frame = pd.DataFrame(rows[:size])
    frame.insert(0, "person_id", [f"L{i:08d}" for i in rng.permutation(size)])
    return frame


def _dob_text(rng: np.random.Generator, dob: np.datetime64, heavy: float) -> tuple[str, str]:
    """(DD/MM/YYYY with at most one error, error name)."""
    y, m, d = (int(x) for x in str(dob)[:10].split("-"))
    r = rng.random() / heavy
    kind = ""
    if r < 0.015:
        if d <= 12 and d != m:
            d, m, kind = m, d, "dob_swap"
    elif r < 0.020:
        d, kind = 1, "dob_default_day"
    elif r < 0.023:
        d, m, kind = 1, 1, "dob_default_day_month"
    elif r < 0.030:
        y, kind = y + int(rng.choice([-1, 1])), "dob_year_1"
    elif r < 0.033:
        y, kind = y + int(rng.choice([-10, 10])), "dob_year_10"
    text = f"{d:02d}/{m:02d}/{y:04d}"
    if kind == "" and r < 0.043:
        pos = int(rng.choice([0, 1, 3, 4, 8, 9]))
        digit = str((int(text[pos]) + int(rng.integers(1, 10))) % 10)
        text, kind = text[:pos] + digit + text[pos + 1:], "dob_digit"
    if kind == "" and r < 0.053:
        text, kind = "", "dob_missing"
    return text, kind


def _corrupt(pop: pd.DataFrame, rng: np.random.Generator, heavy: float
             ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Recorded values of persons `pop` with errors; `heavy` 1 for the full model, < 1 lighter."""
    counts: dict[str, int] = {}

    def hit(rate: float, name: str) -> bool:
        if rng.random() < rate * heavy:
            counts[name] = counts.get(name, 0) + 1
            return True
        return False

    out = []
    for row in pop.itertuples(index=False):
        fore, sur = str(row.forename), str(row.surname)
        if fore in VARIANTS and hit(0.10, "forename_variant"):
            options = VARIANTS[fore]
            fore = options[int(rng.integers(0, len(options)))]
        if hit(0.03, "forename_typo"):
            fore = _typo(rng, fore)
        if hit(0.01, "forename_initial"):
            fore = fore[0]
        age = float((REFERENCE - np.datetime64(str(row.dob)[:10], "D"))
                    / np.timedelta64(1, "D")) / DAYS_PER_YEAR
        if not row.male and 20 <= age <= 60 and hit(0.06, "surname_marriage"):
            new = SURNAMES[int(rng.integers(0, len(SURNAMES)))]
            sur = f"{sur}-{new}" if rng.random() < 0.2 else new
        if hit(0.015, "surname_phonetic"):
            sur = _phonetic(rng, sur)
        if hit(0.03, "surname_typo"):
            sur = _typo(rng, sur)
        dob, kind = _dob_text(rng, row.dob, heavy)
        if kind:
            counts[kind] = counts.get(kind, 0) + 1
        town, postcode = str(row.town), str(row.postcode)
        number, street, stype = int(row.number), str(row.street), int(row.stype)
        if hit(0.10, "moved"):
            if rng.random() < 0.6:  # same district, another street
                postcode = _postcode(rng, str(row.area), int(row.district))
            else:
                town, area, district = _place(rng)
                postcode = _postcode(rng, area, district)
            number, street, stype = _address(rng)
        full, short = STREET_TYPES[stype]
        line = f"{number} {street} {short if hit(0.15, 'street_abbreviated') else full}"
        if hit(0.04, "address_typo"):
            line = _typo(rng, line)
        if hit(0.02, "house_number_dropped"):
            line = line.split(" ", 1)[1]
        if hit(0.03, "address_missing"):
            line = ""
        if hit(0.02, "postcode_typo"):
            chars = list(postcode)
            p = int(rng.integers(1, len(chars)))
            if chars[p] == " " or rng.random() < 0.5:
                q = min(len(chars) - 1, p + 1)
                chars[p], chars[q] = chars[q], chars[p]
            else:
                pool = "0123456789" if chars[p].isdigit() else "ABDEFGHJLNPQRSTUWXYZ"
                chars[p] = pool[int(rng.integers(0, len(pool)))]
            postcode = "".join(chars)
        if hit(0.04, "postcode_missing"):
            postcode = ""
        elif rng.random() < 0.08:
            postcode = postcode.lower() if rng.random() < 0.5 else postcode.replace(" ", "")
        if hit(0.05, "town_locality"):
            localities = TOWNS[town][2]
            town = localities[int(rng.integers(0, len(localities)))]
        if hit(0.15, "town_missing"):
            town = ""
        sex = "M" if row.male else "F"
        if hit(0.003, "sex_wrong"):
            sex = "F" if row.male else "M"
        if hit(0.01, "sex_missing"):
            sex = ""
        if hit(0.02, "forename_missing"):
            fore = ""
        if hit(0.005, "surname_missing"):
            sur = ""
        out.append({"person_id": row.person_id, "forename": fore, "surname": sur,
                    "date_of_birth": dob, "sex": sex, "postcode": postcode, "address": line,
                    "town": town})
    frame = pd.DataFrame(out)
    return frame, {k: v / max(1, len(pop)) for k, v in sorted(counts.items())}


def files(n: int, seed: int = 11) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """(left, right, realised error rates of right). Population n + n/4; left: n persons with
    light errors (a quarter of the rates); right: 80% of left's persons plus every person not
    in left (many of them household members of left persons), full error model, shuffled."""
    extra = n // 4
    pop = population(n + extra, seed)
    rng = np.random.default_rng(seed + 1)
    in_left = np.zeros(len(pop), dtype=bool)
    in_left[rng.choice(len(pop), n, replace=False)] = True
    left_idx = np.flatnonzero(in_left)
    shared = rng.choice(left_idx, n - extra, replace=False)
    right_idx = rng.permutation(np.concatenate([shared, np.flatnonzero(~in_left)]))
    left, _ = _corrupt(pop.iloc[rng.permutation(left_idx)], rng, heavy=0.25)
    right, rates = _corrupt(pop.iloc[right_idx], rng, heavy=1.0)
    return left, right, rates
