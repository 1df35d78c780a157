"""Journeys after discharge: each hospital discharge of a person aged 65+, the pathway taken and
what followed (issue #14 part 1; rules and their sources in docs/analyses.md).

`discharge_journeys(sources, start, end)` returns one row per discharge in `[start, end)` from
the linked, pseudonymised rows (`linkage.linked_view.load_sources`' frames, or the on-disk copy
of `pipeline.linked_copy`): the discharge-to-assess
pathway (0 home with no new support, 1 home with new support starting within 14 days,
2 bedded intermediate care or community hospital, 3 residential or nursing care), death in
hospital, and the outcomes: emergency readmission within 30 and 91 days, at home 91 days after
discharge (the ASCOF 2B measure), long-term care within 12 months, death. An outcome whose
follow-up reaches past the data (`data_through`) is null, never a guessed no. Set-based SQL in
DuckDB over the typed views of `stratify.features.connect`, so 100,000 persons take seconds.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd

from stratify.features import Sources, _in, connect
from stratify.sources import DIED_DESTINATION, ELECTIVE_METHODS, EMERGENCY_METHODS

MIN_AGE = 65
SUPPORT_DAYS = 14          # new support must start within 14 days of discharge (pathway 1)
NEW_SERVICE_LOOKBACK = 28  # a community service seen this many days before admission is not new
# Admission methods that are not a discharge from care: maternity (31, 32) and babies (82, 83).
NOT_DISCHARGES = ("31", "32", "82", "83")
# Discharge destinations (NHS Data Model and Dictionary, DISCHARGE DESTINATION CODE).
HOME = ("19", "29")                  # usual place of residence; temporary residence
BEDDED = ("51", "87")                # another NHS provider's general ward; non-NHS hospital
CARE_HOME = ("54", "65", "85")       # NHS care home; council residential; independent care home
UNKNOWN_DESTINATION = ("98", "99")   # not finished at extract; not known: taken as home
HOME_SUPPORT_COMMUNITY = ("reablement", "rapid_response", "therapy", "district_nursing")
HOME_SUPPORT_SOCIAL = ("reablement", "home_care")
CARE_HOME_SOCIAL = ("residential", "nursing")

PATHWAYS = ("pathway_0", "pathway_1", "pathway_2", "pathway_3", "other",
            "died_in_hospital")
OUTCOMES_91 = ("at_home", "care_home", "in_hospital", "died", "not_yet_known")
COLUMNS = ("person_key", "admission_date", "discharge_date", "month", "age", "age_band",
           "admission_group", "length_of_stay", "destination", "gp_practice_code", "pathway",
           "support", "days_to_support", "support_before_discharge", "existing_support",
           "readmitted_before_support", "readmitted_30d", "readmitted_91d", "at_home_91d",
           "outcome_91d", "long_term_care_12m", "died_91d", "died_12m")


def _days(n: int) -> str:
    return f"INTERVAL {int(n)} DAY"


def data_through(sources: Sources) -> dt.date | None:
    """The last day hospital records reach (latest admission or discharge), None without any.
    `sources`: frames or an on-disk copy (`stratify.features.OnDisk`); read in SQL, so the
    rows are never held in memory."""
    con = connect(sources)
    try:
        return data_through_on(con)
    finally:
        con.close()


def data_through_on(con: duckdb.DuckDBPyConnection) -> dt.date | None:
    """`data_through` on a connection made by `stratify.features.connect`."""
    last = con.execute("""SELECT max(d) FROM (
        SELECT admission_date AS d FROM v_apc UNION ALL SELECT discharge_date FROM v_apc)
    """).fetchone()[0]
    return None if last is None else pd.Timestamp(last).date()


def discharge_journeys(sources: Sources, start: dt.date, end: dt.date,
                       through: dt.date | None = None, threads: int | None = None
                       ) -> pd.DataFrame:
    """One row per discharge in `[start, end)` of a person aged 65+ (columns `COLUMNS`).

    `through` is the last day the data can show an outcome (default: `data_through`); an
    outcome whose window ends after it is null. ValueError when `end` is not after `start`.
    `sources`: frames or an on-disk copy (`stratify.features.OnDisk`).
    """
    if end <= start:
        raise ValueError("journeys: the period's end must be after its start")
    con = connect(sources, threads)
    try:
        through = through or data_through_on(con) or end
        for sql in _sql(start, end, through):
            con.execute(sql)
        frame = con.execute(f"SELECT {', '.join(COLUMNS)} FROM journeys "
                            "ORDER BY person_key, discharge_date, admission_date").df()
    finally:
        con.close()
    for column in ("admission_date", "discharge_date"):
        frame[column] = pd.to_datetime(frame[column]).dt.date
    for column in ("readmitted_30d", "readmitted_91d", "at_home_91d", "long_term_care_12m",
                   "died_91d", "died_12m"):
        frame[column] = frame[column].astype("boolean")
    return frame.reset_index(drop=True)


def _sql(start: dt.date, end: dt.date, through: dt.date) -> list[str]:
    """The statements building table `journeys` (docs/analyses.md states each rule)."""
    emergency, through_ = _in(EMERGENCY_METHODS), f"DATE '{through.isoformat()}'"
    return ["""
        CREATE OR REPLACE TEMP TABLE spells AS
        SELECT row_number() OVER (ORDER BY person_key, admission_date, discharge_date,
                admission_method, discharge_destination) AS spell_no,
            person_key, CAST(admission_date AS DATE) AS adm, CAST(discharge_date AS DATE) AS dis,
            admission_method AS method, discharge_destination AS dest, birth_ym
        FROM v_apc WHERE person_key IS NOT NULL AND admission_date IS NOT NULL
    """, f"""
        CREATE OR REPLACE TEMP TABLE died AS
        SELECT person_key, min(d) AS died_on FROM (
            SELECT person_key, CAST(date_of_death AS DATE) AS d FROM v_deaths
            UNION ALL SELECT person_key, dis FROM spells WHERE dest = '{DIED_DESTINATION}')
        WHERE d IS NOT NULL GROUP BY person_key
    """, """
        CREATE OR REPLACE TEMP TABLE person AS
        SELECT person_key, arg_max(gp_practice_code, registration_date) FILTER (
                WHERE gp_practice_code IS NOT NULL) AS gp_practice_code,
            min(birth_ym) AS birth_ym
        FROM v_gp_patients GROUP BY person_key
    """, f"""
        CREATE OR REPLACE TEMP TABLE idx AS
        WITH s AS (
            SELECT s.*, coalesce(p.birth_ym, s.birth_ym) AS ym, p.gp_practice_code
            FROM spells s LEFT JOIN person p USING (person_key)
            WHERE s.dis IS NOT NULL AND s.dis >= DATE '{start.isoformat()}'
            AND s.dis < DATE '{end.isoformat()}' AND s.method NOT IN {_in(NOT_DISCHARGES)}
            AND NOT (s.method IN {_in(ELECTIVE_METHODS)} AND s.dis = s.adm))
        SELECT s.*, floor(((year(dis) * 12 + month(dis)) - (TRY_CAST(substr(ym, 1, 4) AS INT) * 12
                + TRY_CAST(substr(ym, 6, 2) AS INT))) / 12) AS age,
            d.died_on,
            (SELECT min(o.adm) FROM spells o WHERE o.person_key = s.person_key
             AND o.spell_no <> s.spell_no AND o.adm >= s.dis) AS next_adm,
            (SELECT min(o.adm) FROM spells o WHERE o.person_key = s.person_key
             AND o.spell_no <> s.spell_no AND o.adm >= s.dis AND o.method IN {emergency})
                AS next_emergency
        FROM s LEFT JOIN died d USING (person_key)
    """, f"""
        DELETE FROM idx WHERE age IS NULL OR age < {MIN_AGE}
    """, f"""
        CREATE OR REPLACE TEMP TABLE support AS
        WITH offered AS (
            SELECT i.spell_no, CAST(c.contact_date AS DATE) AS began,
                'community_' || c.service AS kind, 1 AS level
            FROM idx i JOIN v_community c USING (person_key)
            WHERE c.service IN {_in(HOME_SUPPORT_COMMUNITY)}
            AND NOT EXISTS (SELECT 1 FROM v_community b WHERE b.person_key = c.person_key
                AND b.service = c.service AND CAST(b.contact_date AS DATE) < i.adm
                AND CAST(b.contact_date AS DATE) >= i.adm - {_days(NEW_SERVICE_LOOKBACK)})
            UNION ALL
            SELECT i.spell_no, CAST(sc.start_date AS DATE), 'social_care_' || sc.service_type,
                CASE WHEN sc.service_type IN {_in(CARE_HOME_SOCIAL)} THEN 3 ELSE 1 END
            FROM idx i JOIN v_social_care sc USING (person_key)
            WHERE sc.service_type IN {_in(HOME_SUPPORT_SOCIAL + CARE_HOME_SOCIAL)})
        SELECT o.spell_no, min(o.began) AS began, max(o.level) AS level,
            arg_min(o.kind, o.began) AS kind
        FROM offered o JOIN idx i USING (spell_no)
        WHERE o.began >= i.adm AND o.began <= i.dis + {_days(SUPPORT_DAYS)}
        AND (i.next_adm IS NULL OR o.began < i.next_adm)
        GROUP BY o.spell_no
    """, f"""
        CREATE OR REPLACE TEMP TABLE existing AS
        SELECT i.spell_no, max(CASE WHEN sc.service_type IN {_in(CARE_HOME_SOCIAL)}
                                THEN 1 ELSE 0 END) AS care_home_resident
        FROM idx i JOIN v_social_care sc USING (person_key)
        WHERE sc.service_type IN {_in(HOME_SUPPORT_SOCIAL + CARE_HOME_SOCIAL)}
        AND CAST(sc.start_date AS DATE) < i.adm
        AND (sc.end_date IS NULL OR CAST(sc.end_date AS DATE) >= i.adm)
        GROUP BY i.spell_no
    """, _at_day91(through_), f"""
        CREATE OR REPLACE TEMP TABLE ltc AS
        SELECT i.spell_no FROM idx i JOIN v_social_care sc USING (person_key)
        WHERE sc.service_type IN {_in(CARE_HOME_SOCIAL)}
        AND CAST(sc.start_date AS DATE) >= i.adm
        AND CAST(sc.start_date AS DATE) <= i.dis + {_days(365)}
        UNION SELECT i.spell_no FROM idx i JOIN spells o USING (person_key)
        WHERE o.dest IN {_in(CARE_HOME)} AND o.dis >= i.dis AND o.dis <= i.dis + {_days(365)}
    """, _journeys(through_)]


def _at_day91(through_: str) -> str:
    """Table `day91`: where each discharged person is 91 days on (hospital, care home)."""
    return f"""
        CREATE OR REPLACE TEMP TABLE day91 AS
        SELECT i.spell_no,
            EXISTS (SELECT 1 FROM spells o WHERE o.person_key = i.person_key
                AND o.adm <= i.dis + {_days(91)}
                AND (o.dis IS NULL OR o.dis > i.dis + {_days(91)})) AS in_hospital,
            EXISTS (SELECT 1 FROM v_social_care sc WHERE sc.person_key = i.person_key
                AND sc.service_type IN {_in(CARE_HOME_SOCIAL)}
                AND CAST(sc.start_date AS DATE) <= i.dis + {_days(91)}
                AND (sc.end_date IS NULL OR CAST(sc.end_date AS DATE) >= i.dis + {_days(91)}))
            OR coalesce((SELECT arg_max(o.dest, o.dis) FROM spells o
                WHERE o.person_key = i.person_key AND o.dis IS NOT NULL
                AND o.dis <= i.dis + {_days(91)}) IN {_in(CARE_HOME)}, FALSE) AS care_home
        FROM idx i
    """


def _journeys(through_: str) -> str:
    """Table `journeys`: the pathway by the rules' order, then the outcomes (null when their
    follow-up is not complete by `through_`)."""
    died_in = f"(i.dest = '{DIED_DESTINATION}' OR (i.died_on IS NOT NULL AND i.died_on <= i.dis))"
    resident = "coalesce(e.care_home_resident, 0) = 1"
    home = (f"(i.dest IS NULL OR i.dest IN {_in(HOME + UNKNOWN_DESTINATION)} "
            f"OR (i.dest IN {_in(CARE_HOME)} AND {resident}))")
    known = {n: f"i.dis + {_days(n)} <= {through_}" for n in (30, 91, 365)}

    def within(n: int, event: str) -> str:
        return (f"CASE WHEN {died_in} THEN NULL WHEN {event} IS NOT NULL AND {event} < "
                f"i.dis + {_days(n)} THEN TRUE WHEN {known[n]} THEN FALSE END")

    def died_within(n: int) -> str:
        return (f"CASE WHEN {died_in} THEN NULL WHEN i.died_on IS NOT NULL AND i.died_on <= "
                f"i.dis + {_days(n)} THEN TRUE WHEN {known[n]} THEN FALSE END")

    return f"""
        CREATE OR REPLACE TEMP TABLE journeys AS
        WITH j AS (
            SELECT i.*, s.began, s.level, s.kind, e.care_home_resident,
                CASE WHEN {died_in} THEN 'died_in_hospital'
                     WHEN i.dest IN {_in(BEDDED)} THEN 'pathway_2'
                     WHEN i.dest IN {_in(CARE_HOME)} AND NOT {resident} THEN 'pathway_3'
                     WHEN NOT {home} THEN 'other'
                     WHEN s.level = 3 AND NOT {resident} THEN 'pathway_3'
                     WHEN s.level >= 1 THEN 'pathway_1'
                     ELSE 'pathway_0' END AS pathway
            FROM idx i LEFT JOIN support s USING (spell_no)
            LEFT JOIN existing e USING (spell_no))
        SELECT i.person_key, i.adm AS admission_date, i.dis AS discharge_date,
            strftime(i.dis, '%Y-%m') AS month, CAST(i.age AS INTEGER) AS age,
            CASE WHEN i.age >= 85 THEN '85+' WHEN i.age >= 75 THEN '75-84' ELSE '65-74' END
                AS age_band,
            CASE WHEN i.method IN {_in(EMERGENCY_METHODS)} THEN 'emergency'
                 WHEN i.method IN {_in(ELECTIVE_METHODS)} THEN 'elective' ELSE 'other' END
                AS admission_group,
            CAST(date_diff('day', i.adm, i.dis) AS INTEGER) AS length_of_stay,
            i.dest AS destination, i.gp_practice_code, i.pathway,
            CASE WHEN i.pathway IN ('pathway_1', 'pathway_3') THEN i.kind END AS support,
            CASE WHEN i.pathway IN ('pathway_1', 'pathway_3') AND i.began IS NOT NULL
                 THEN CAST(date_diff('day', i.dis, i.began) AS INTEGER) END AS days_to_support,
            coalesce(i.began <= i.dis, FALSE) AS support_before_discharge,
            i.care_home_resident IS NOT NULL AS existing_support,
            i.next_emergency IS NOT NULL AND i.next_emergency < i.dis + {_days(SUPPORT_DAYS)}
                AND (i.began IS NULL OR i.began >= i.next_emergency) AS readmitted_before_support,
            {within(30, 'i.next_emergency')} AS readmitted_30d,
            {within(91, 'i.next_emergency')} AS readmitted_91d,
            CASE WHEN {died_in} OR NOT {known[91]} THEN NULL
                 ELSE NOT (coalesce(i.died_on <= i.dis + {_days(91)}, FALSE)
                           OR d.in_hospital OR d.care_home) END AS at_home_91d,
            CASE WHEN {died_in} OR coalesce(i.died_on <= i.dis + {_days(91)}, FALSE)
                     THEN 'died'
                 WHEN NOT {known[91]} THEN 'not_yet_known'
                 WHEN d.in_hospital THEN 'in_hospital'
                 WHEN d.care_home THEN 'care_home' ELSE 'at_home' END AS outcome_91d,
            CASE WHEN {died_in} OR coalesce(i.care_home_resident, 0) = 1 THEN NULL
                 WHEN l.spell_no IS NOT NULL THEN TRUE WHEN {known[365]} THEN FALSE END
                AS long_term_care_12m,
            {died_within(91)} AS died_91d,
            {died_within(365)} AS died_12m
        FROM j i LEFT JOIN day91 d USING (spell_no)
        LEFT JOIN (SELECT DISTINCT spell_no FROM ltc) l USING (spell_no)
    """
