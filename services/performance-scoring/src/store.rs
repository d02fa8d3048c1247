//! SQL of the `scoring` schema: case facts, the daily aggregates and their roll-ups, teams,
//! order volumes, scoring models, published evaluations and the rebuild.

use std::sync::OnceLock;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres, Row};
use uuid::Uuid;

use crate::domain::facts::{CaseFacts, Deltas};
use crate::domain::kpi::Counters;
use crate::domain::model::{ModelDefinition, ScoreCard};

// ---------------------------------------------------------------------------------------------
// Case facts and the aggregates they feed.

const FACT_COLUMNS: &str = "department_id, owner_id, team_id, category, severity, opened_at, \
     cancelled, resolved, ever_resolved, reopen_count, escalations, transfers, \
     first_response_on_time, first_response_breached, resolution_met_count, resolution_late, \
     handling_seconds, survey_invited, survey_answered, csat, nps, solved";

fn facts_from_row(row: &sqlx::postgres::PgRow, at: usize) -> Result<CaseFacts, sqlx::Error> {
    Ok(CaseFacts {
        department_id: row.try_get(at)?,
        owner_id: row.try_get(at + 1)?,
        team_id: row.try_get(at + 2)?,
        category: row.try_get(at + 3)?,
        severity: row.try_get(at + 4)?,
        opened_at: row.try_get(at + 5)?,
        cancelled: row.try_get(at + 6)?,
        resolved: row.try_get(at + 7)?,
        ever_resolved: row.try_get(at + 8)?,
        reopen_count: row.try_get(at + 9)?,
        escalations: row.try_get(at + 10)?,
        transfers: row.try_get(at + 11)?,
        first_response_on_time: row.try_get(at + 12)?,
        first_response_breached: row.try_get(at + 13)?,
        resolution_met_count: row.try_get(at + 14)?,
        resolution_late: row.try_get(at + 15)?,
        handling_seconds: row.try_get(at + 16)?,
        survey_invited: row.try_get(at + 17)?,
        survey_answered: row.try_get(at + 18)?,
        csat: row.try_get(at + 19)?,
        nps: row.try_get(at + 20)?,
        solved: row.try_get(at + 21)?,
    })
}

/// Locks the facts of several cases (in id order, so writers never deadlock). A case seen
/// for the first time is created with the facts given for it, which should be what the batch
/// makes of an empty row: one write, where an empty row and the update that filled it were
/// two (the second never HOT, as it sets indexed columns). Returns the facts stored now for
/// every case, and which cases this call created.
pub async fn lock_facts_all(
    conn: &mut PgConnection,
    fresh: &[(Uuid, CaseFacts)],
) -> Result<
    (
        std::collections::HashMap<Uuid, CaseFacts>,
        std::collections::HashSet<Uuid>,
    ),
    sqlx::Error,
> {
    let mut fresh = fresh.to_vec();
    fresh.sort_by_key(|(id, _)| *id);
    fresh.dedup_by_key(|(id, _)| *id);
    // The rows this inserts are new, and this transaction's until it ends. Only cases seen
    // before are read and locked by a second statement, which a batch of openings never needs.
    static INSERT: OnceLock<String> = OnceLock::new();
    let sql = INSERT.get_or_init(|| {
        format!(
            "INSERT INTO scoring.case_facts (case_id, {FACT_COLUMNS})
             SELECT * FROM unnest({}) AS v(case_id, {FACT_COLUMNS}) ORDER BY case_id
             ON CONFLICT DO NOTHING
             RETURNING case_id",
            fact_parameters()
        )
    });
    let created = bind_facts(sqlx::query(sql), &fresh)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<std::collections::HashSet<Uuid>, _>>()?;
    let mut facts = std::collections::HashMap::with_capacity(fresh.len());
    let mut seen_before = Vec::new();
    for (id, f) in fresh {
        if created.contains(&id) {
            facts.insert(id, f);
        } else {
            seen_before.push(id);
        }
    }
    if seen_before.is_empty() {
        return Ok((facts, created));
    }
    let rows = sqlx::query(&format!(
        "SELECT case_id, {FACT_COLUMNS} FROM scoring.case_facts WHERE case_id = ANY($1)
         ORDER BY case_id FOR UPDATE"
    ))
    // Prepared: a consumer's transaction plans it once, generically (kit `CONSUMER_PLANS`).
    .bind(&seen_before)
    .fetch_all(conn)
    .await?;
    for row in &rows {
        facts.insert(row.try_get(0)?, facts_from_row(row, 1)?);
    }
    Ok((facts, created))
}

/// `$1, …, $23`: the case ids and one array per fact column, bound by [`bind_facts`].
fn fact_parameters() -> String {
    let columns = 1 + FACT_COLUMNS.split(", ").count();
    let arrays: Vec<String> = (1..=columns).map(|i| format!("${i}")).collect();
    arrays.join(", ")
}

/// Binds the case ids and one array per fact column, in [`FACT_COLUMNS`] order. One array per
/// column: the statement's text and its planning are the same whatever the batch (a VALUES
/// list of 23 parameters a row was planned afresh at about 0.3 ms a batch). The arrays' types
/// come with the parameters (sqlx sends each one's).
fn bind_facts<'q>(
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    facts: &[(Uuid, CaseFacts)],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    fn column<T>(facts: &[(Uuid, CaseFacts)], of: impl Fn(&CaseFacts) -> T) -> Vec<T> {
        facts.iter().map(|(_, f)| of(f)).collect()
    }
    let case_ids: Vec<Uuid> = facts.iter().map(|(id, _)| *id).collect();
    query
        .bind(case_ids)
        .bind(column(facts, |f| f.department_id.clone()))
        .bind(column(facts, |f| f.owner_id.clone()))
        .bind(column(facts, |f| f.team_id.clone()))
        .bind(column(facts, |f| f.category.clone()))
        .bind(column(facts, |f| f.severity))
        .bind(column(facts, |f| f.opened_at))
        .bind(column(facts, |f| f.cancelled))
        .bind(column(facts, |f| f.resolved))
        .bind(column(facts, |f| f.ever_resolved))
        .bind(column(facts, |f| f.reopen_count))
        .bind(column(facts, |f| f.escalations))
        .bind(column(facts, |f| f.transfers))
        .bind(column(facts, |f| f.first_response_on_time))
        .bind(column(facts, |f| f.first_response_breached))
        .bind(column(facts, |f| f.resolution_met_count))
        .bind(column(facts, |f| f.resolution_late))
        .bind(column(facts, |f| f.handling_seconds))
        .bind(column(facts, |f| f.survey_invited))
        .bind(column(facts, |f| f.survey_answered))
        .bind(column(facts, |f| f.csat))
        .bind(column(facts, |f| f.nps))
        .bind(column(facts, |f| f.solved))
}

/// Saves the facts of several (locked) cases with one statement.
pub async fn save_facts_all(
    conn: &mut PgConnection,
    facts: &[(Uuid, CaseFacts)],
) -> Result<(), sqlx::Error> {
    if facts.is_empty() {
        return Ok(());
    }
    static UPDATE: OnceLock<String> = OnceLock::new();
    let sql = UPDATE.get_or_init(|| {
        format!(
            "UPDATE scoring.case_facts f SET ({FACT_COLUMNS}, updated_at) = (v.{}, now())
             FROM unnest({}) AS v(case_id, {FACT_COLUMNS})
             WHERE f.case_id = v.case_id",
            FACT_COLUMNS.replace(", ", ", v."),
            fact_parameters()
        )
    });
    bind_facts(sqlx::query(sql), facts)
        // Prepared: a consumer's transaction plans it once, generically (kit `CONSUMER_PLANS`).
        .execute(conn)
        .await?;
    Ok(())
}

/// The teams agents were in at given instants, in the order asked (None: no team).
pub async fn teams_at(
    conn: &mut PgConnection,
    asks: &[(String, DateTime<Utc>)],
) -> Result<Vec<Option<String>>, sqlx::Error> {
    if asks.is_empty() {
        return Ok(Vec::new());
    }
    let (agents, ats): (Vec<&str>, Vec<DateTime<Utc>>) =
        asks.iter().map(|(a, t)| (a.as_str(), *t)).unzip();
    let rows: Vec<(Option<String>,)> = sqlx::query_as(
        "SELECT (SELECT m.team_id FROM scoring.team_memberships m
                 WHERE m.agent_id = q.agent AND m.effective_from <= q.at
                 ORDER BY m.effective_from DESC, m.id DESC LIMIT 1)
         FROM unnest($1::text[], $2::timestamptz[]) WITH ORDINALITY AS q(agent, at, n)
         ORDER BY q.n",
    )
    .bind(&agents)
    .bind(&ats)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t,)| t.filter(|t| !t.is_empty()))
        .collect())
}

/// Adds summed deltas to the aggregate rows: one statement for the counters and one for the
/// categories, rows in key order (so concurrent writers lock them in the same order).
pub async fn apply_deltas(conn: &mut PgConnection, deltas: &Deltas) -> Result<(), sqlx::Error> {
    if !deltas.counters.is_empty() {
        let columns = Counters::COLUMNS;
        let mut query = sqlx::QueryBuilder::new(format!(
            "INSERT INTO scoring.daily_aggregates
                 (subject_kind, subject_id, department_id, day, {}, handling_histogram) ",
            columns.join(", ")
        ));
        query.push_values(&deltas.counters, |mut row, (key, day, counters)| {
            row.push_bind(key.kind)
                .push_bind(&key.subject_id)
                .push_bind(&key.department_id)
                .push_bind(*day);
            for value in counters.values() {
                row.push_bind(value);
            }
            // Most deltas (openings, clock events) move no handling time: an empty array
            // leaves the stored histogram as it is without summing it.
            let histogram = if counters.handling_histogram.iter().all(|n| *n == 0) {
                Vec::new()
            } else {
                counters.handling_histogram.to_vec()
            };
            row.push_bind(histogram);
        });
        let updates: Vec<String> = columns
            .iter()
            .map(|c| format!("{c} = scoring.daily_aggregates.{c} + EXCLUDED.{c}"))
            .collect();
        // The histogram sum is written out rather than calling `scoring.add_arrays`: an SQL
        // function's body is planned again in every statement that calls it (0.3–0.5 ms a
        // statement, measured), the inline form is planned with the statement.
        query.push(format!(
            " ON CONFLICT (subject_kind, subject_id, day, department_id) DO UPDATE SET {},
                 handling_histogram = CASE
                     WHEN cardinality(EXCLUDED.handling_histogram) = 0
                         THEN scoring.daily_aggregates.handling_histogram
                     ELSE ARRAY(
                         SELECT coalesce(scoring.daily_aggregates.handling_histogram[i], 0)
                              + coalesce(EXCLUDED.handling_histogram[i], 0)
                         FROM generate_series(1, greatest(
                             cardinality(scoring.daily_aggregates.handling_histogram),
                             cardinality(EXCLUDED.handling_histogram))) AS i
                         ORDER BY i)
                 END",
            updates.join(", ")
        ));
        query.build().execute(&mut *conn).await?;
    }
    if !deltas.categories.is_empty() {
        let mut query = sqlx::QueryBuilder::new(
            "INSERT INTO scoring.daily_categories
                 (subject_kind, subject_id, department_id, day, category, severity, cases) ",
        );
        query.push_values(
            &deltas.categories,
            |mut row, (key, day, category, severity, cases)| {
                row.push_bind(key.kind)
                    .push_bind(&key.subject_id)
                    .push_bind(&key.department_id)
                    .push_bind(*day)
                    .push_bind(category)
                    .push_bind(*severity)
                    .push_bind(*cases);
            },
        );
        query.push(
            " ON CONFLICT (subject_kind, subject_id, day, department_id, category, severity)
             DO UPDATE SET cases = scoring.daily_categories.cases + EXCLUDED.cases",
        );
        query.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// The summed counters; the histogram only when asked, as summing arrays costs ~10 µs a row
/// (a leaderboard sums thousands of rows; only a model scoring the p90 needs it).
fn sums_select_with(histogram: bool) -> &'static str {
    static WITH: OnceLock<String> = OnceLock::new();
    static WITHOUT: OnceLock<String> = OnceLock::new();
    let build = |histogram: bool| {
        let sums: Vec<String> = Counters::COLUMNS
            .iter()
            .map(|c| format!("coalesce(sum({c}), 0)::bigint"))
            .collect();
        let h = if histogram {
            "coalesce(scoring.sum_arrays(handling_histogram), '{}')"
        } else {
            "'{}'::bigint[]"
        };
        format!("{}, {h}", sums.join(", "))
    };
    if histogram {
        WITH.get_or_init(|| build(true))
    } else {
        WITHOUT.get_or_init(|| build(false))
    }
}

fn sums_select() -> &'static str {
    sums_select_with(true)
}

fn counters_from_row(row: &sqlx::postgres::PgRow, offset: usize) -> Result<Counters, sqlx::Error> {
    let n = Counters::COLUMNS.len();
    let mut values = Vec::with_capacity(n);
    for i in 0..n {
        values.push(row.try_get::<i64, _>(offset + i)?);
    }
    let histogram: Vec<i64> = row.try_get(offset + n)?;
    Ok(Counters::from_values(&values, &histogram))
}

/// Which aggregate rows a query sums.
#[derive(Clone, Debug)]
pub struct Scope<'a> {
    pub kind: i16,
    pub subject_id: &'a str,
    /// Only cases of this department (a supervisor reading an agent's figures).
    pub department_id: Option<&'a str>,
    pub first: NaiveDate,
    pub end_exclusive: NaiveDate,
}

/// Sums the daily rows of one subject over `[first, end_exclusive)`.
pub async fn sum_counters(pool: &PgPool, scope: &Scope<'_>) -> Result<Counters, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {} FROM scoring.daily_aggregates
         WHERE subject_kind = $1 AND subject_id = $2 AND day >= $3 AND day < $4
           AND ($5::text IS NULL OR department_id = $5)",
        sums_select()
    ))
    .bind(scope.kind)
    .bind(scope.subject_id)
    .bind(scope.first)
    .bind(scope.end_exclusive)
    .bind(scope.department_id)
    .fetch_one(pool)
    .await?;
    counters_from_row(&row, 0)
}

/// Cases per (category, severity) of one subject over the days.
pub async fn category_counts(
    pool: &PgPool,
    scope: &Scope<'_>,
) -> Result<Vec<(String, i16, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT category, severity, sum(cases)::bigint FROM scoring.daily_categories
         WHERE subject_kind = $1 AND subject_id = $2 AND day >= $3 AND day < $4
           AND ($5::text IS NULL OR department_id = $5)
         GROUP BY category, severity HAVING sum(cases) <> 0
         ORDER BY category, severity",
    )
    .bind(scope.kind)
    .bind(scope.subject_id)
    .bind(scope.first)
    .bind(scope.end_exclusive)
    .bind(scope.department_id)
    .fetch_all(pool)
    .await
}

/// Summed counters of every agent (or team) on one department's cases over the days.
pub async fn department_subjects(
    pool: &PgPool,
    kind: i16,
    department_id: &str,
    first: NaiveDate,
    end_exclusive: NaiveDate,
    with_histogram: bool,
) -> Result<Vec<(String, Counters)>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT subject_id, {} FROM scoring.daily_aggregates
         WHERE subject_kind = $1 AND department_id = $2 AND day >= $3 AND day < $4
         GROUP BY subject_id",
        sums_select_with(with_histogram)
    ))
    .bind(kind)
    .bind(department_id)
    .bind(first)
    .bind(end_exclusive)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, counters_from_row(row, 1)?)))
        .collect()
}

/// Summed counters of every (subject, department) over the days: the input of an evaluation.
pub async fn all_subjects(
    conn: &mut PgConnection,
    first: NaiveDate,
    end_exclusive: NaiveDate,
    with_histogram: bool,
) -> Result<Vec<(i16, String, String, Counters)>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT subject_kind, subject_id, department_id, {} FROM scoring.daily_aggregates
         WHERE day >= $1 AND day < $2
         GROUP BY subject_kind, subject_id, department_id
         ORDER BY subject_kind, subject_id, department_id",
        sums_select_with(with_histogram)
    ))
    .bind(first)
    .bind(end_exclusive)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                counters_from_row(row, 3)?,
            ))
        })
        .collect()
}

/// Complaints and orders over the days with a recorded order volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderFigures {
    pub complaints: u64,
    pub orders: u64,
    pub days_with_orders: u32,
}

pub async fn order_figures(
    pool: &PgPool,
    first: NaiveDate,
    end_exclusive: NaiveDate,
) -> Result<OrderFigures, sqlx::Error> {
    let (orders, days, complaints): (i64, i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(o.orders), 0)::bigint, count(*),
                coalesce(sum(a.cases_opened), 0)::bigint
         FROM scoring.order_volumes o
         LEFT JOIN scoring.daily_aggregates a
           ON a.subject_kind = 4 AND a.subject_id = '' AND a.department_id = '' AND a.day = o.day
         WHERE o.day >= $1 AND o.day < $2",
    )
    .bind(first)
    .bind(end_exclusive)
    .fetch_one(pool)
    .await?;
    Ok(OrderFigures {
        complaints: complaints.max(0) as u64,
        orders: orders.max(0) as u64,
        days_with_orders: days.max(0) as u32,
    })
}

// ---------------------------------------------------------------------------------------------
// Order volumes.

/// Records orders per day (a day recorded again is corrected); idempotent on `request_id`.
pub async fn record_order_volumes(
    pool: &PgPool,
    request_id: &str,
    days: &[(NaiveDate, i64)],
    recorded_by: &str,
) -> Result<u32, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtext('scoring.order_volume_requests'), hashtext($1))",
    )
    .bind(request_id)
    .execute(&mut *tx)
    .await?;
    let seen: Option<(i32,)> = sqlx::query_as(
        "SELECT days_recorded FROM scoring.order_volume_requests WHERE request_id = $1",
    )
    .bind(request_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((n,)) = seen {
        return Ok(n.max(0) as u32);
    }
    let (dates, orders): (Vec<NaiveDate>, Vec<i64>) = days.iter().copied().unzip();
    sqlx::query(
        "INSERT INTO scoring.order_volumes (day, orders, recorded_by)
         SELECT d, o, $3 FROM unnest($1::date[], $2::bigint[]) AS t(d, o)
         ON CONFLICT (day) DO UPDATE SET orders = EXCLUDED.orders,
             recorded_at = now(), recorded_by = EXCLUDED.recorded_by",
    )
    .bind(&dates)
    .bind(&orders)
    .bind(recorded_by)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO scoring.order_volume_requests (request_id, days_recorded) VALUES ($1, $2)",
    )
    .bind(request_id)
    .bind(days.len() as i32)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(days.len() as u32)
}

// ---------------------------------------------------------------------------------------------
// Teams.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub agent_id: String,
    pub department_id: String,
    pub team_id: String,
    pub effective_from: DateTime<Utc>,
    pub assigned_by: String,
}

const MEMBERSHIP_COLUMNS: &str = "agent_id, department_id, team_id, effective_from, assigned_by";

fn membership(row: &sqlx::postgres::PgRow) -> Result<Membership, sqlx::Error> {
    Ok(Membership {
        agent_id: row.try_get(0)?,
        department_id: row.try_get(1)?,
        team_id: row.try_get(2)?,
        effective_from: row.try_get(3)?,
        assigned_by: row.try_get(4)?,
    })
}

/// Puts an agent in a team from now on; idempotent on `request_id`.
pub async fn assign_team(
    pool: &PgPool,
    request_id: &str,
    agent_id: &str,
    department_id: &str,
    team_id: &str,
    assigned_by: &str,
) -> Result<Membership, sqlx::Error> {
    let inserted = sqlx::query(&format!(
        "INSERT INTO scoring.team_memberships (request_id, agent_id, department_id, team_id, assigned_by)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id) DO NOTHING
         RETURNING {MEMBERSHIP_COLUMNS}"
    ))
    .bind(request_id)
    .bind(agent_id)
    .bind(department_id)
    .bind(team_id)
    .bind(assigned_by)
    .fetch_optional(pool)
    .await?;
    match inserted {
        Some(row) => membership(&row),
        None => {
            let row = sqlx::query(&format!(
                "SELECT {MEMBERSHIP_COLUMNS} FROM scoring.team_memberships WHERE request_id = $1"
            ))
            .bind(request_id)
            .fetch_one(pool)
            .await?;
            membership(&row)
        }
    }
}

/// Current members of a department's teams, by agent id after `after_agent`.
pub async fn team_members(
    pool: &PgPool,
    department_id: &str,
    team_id: Option<&str>,
    after_agent: &str,
    limit: i64,
) -> Result<Vec<Membership>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {MEMBERSHIP_COLUMNS} FROM (
             SELECT DISTINCT ON (agent_id) {MEMBERSHIP_COLUMNS} FROM scoring.team_memberships
             WHERE effective_from <= now() AND agent_id > $3
             ORDER BY agent_id, effective_from DESC, id DESC) current
         WHERE department_id = $1 AND team_id <> '' AND ($2::text IS NULL OR team_id = $2)
         ORDER BY agent_id LIMIT $4"
    ))
    .bind(department_id)
    .bind(team_id)
    .bind(after_agent)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(membership).collect()
}

/// The department of a team (from its latest membership), if the team is known.
pub async fn team_department(pool: &PgPool, team_id: &str) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT department_id FROM scoring.team_memberships WHERE team_id = $1
         ORDER BY effective_from DESC, id DESC LIMIT 1",
    )
    .bind(team_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(d,)| d))
}

// ---------------------------------------------------------------------------------------------
// Scoring models.

#[derive(Clone, Debug, PartialEq)]
pub struct StoredModel {
    pub version: u32,
    pub name: String,
    pub definition: ModelDefinition,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

const MODEL_COLUMNS: &str = "version, name, definition, created_at, created_by";

fn stored_model(row: &sqlx::postgres::PgRow) -> Result<StoredModel, sqlx::Error> {
    let version: i32 = row.try_get(0)?;
    let Json(definition): Json<ModelDefinition> = row.try_get(2)?;
    Ok(StoredModel {
        version: version.max(0) as u32,
        name: row.try_get(1)?,
        definition,
        created_at: row.try_get(3)?,
        created_by: row.try_get(4)?,
    })
}

/// Version 1 is the default model, written on first start.
pub async fn ensure_default_model(
    pool: &PgPool,
    model: &ModelDefinition,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO scoring.scoring_models (version, request_id, name, definition, created_by)
         VALUES (1, NULL, 'default', $1, 'system') ON CONFLICT (version) DO NOTHING",
    )
    .bind(Json(model))
    .execute(pool)
    .await?;
    Ok(())
}

/// Adds the next version; idempotent on `request_id`.
pub async fn create_model(
    pool: &PgPool,
    request_id: &str,
    name: &str,
    definition: &ModelDefinition,
    created_by: &str,
) -> Result<StoredModel, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('scoring.scoring_models'))")
        .execute(&mut *tx)
        .await?;
    let existing = sqlx::query(&format!(
        "SELECT {MODEL_COLUMNS} FROM scoring.scoring_models WHERE request_id = $1"
    ))
    .bind(request_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = existing {
        return stored_model(&row);
    }
    let row = sqlx::query(&format!(
        "INSERT INTO scoring.scoring_models (version, request_id, name, definition, created_by)
         SELECT coalesce(max(version), 0) + 1, $1, $2, $3, $4 FROM scoring.scoring_models
         RETURNING {MODEL_COLUMNS}"
    ))
    .bind(request_id)
    .bind(name)
    .bind(Json(definition))
    .bind(created_by)
    .fetch_one(&mut *tx)
    .await?;
    let model = stored_model(&row)?;
    tx.commit().await?;
    Ok(model)
}

/// A model version, or the newest when `version` is `None`.
pub async fn model<'e, E>(
    executor: E,
    version: Option<u32>,
) -> Result<Option<StoredModel>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let row = sqlx::query(&format!(
        "SELECT {MODEL_COLUMNS} FROM scoring.scoring_models
         WHERE ($1::integer IS NULL OR version = $1) ORDER BY version DESC LIMIT 1"
    ))
    .bind(version.map(|v| v as i32))
    .fetch_optional(executor)
    .await?;
    row.as_ref().map(stored_model).transpose()
}

/// Models newest first, below `before_version`.
pub async fn models(
    pool: &PgPool,
    before_version: Option<u32>,
    limit: i64,
) -> Result<Vec<StoredModel>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {MODEL_COLUMNS} FROM scoring.scoring_models
         WHERE ($1::integer IS NULL OR version < $1) ORDER BY version DESC LIMIT $2"
    ))
    .bind(before_version.map(|v| v as i32))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(stored_model).collect()
}

// ---------------------------------------------------------------------------------------------
// Evaluations.

#[derive(Clone, Debug, PartialEq)]
pub struct EvaluationRecord {
    pub id: Uuid,
    pub year: i32,
    pub quarter: u32,
    pub model_version: u32,
    pub revision: u32,
    /// 1 scheduled, 2 on demand.
    pub trigger: i16,
    pub published_at: DateTime<Utc>,
    pub run_by: String,
    pub reason: String,
    pub quarter_complete: bool,
    pub subjects: u32,
    pub subjects_graded: u32,
    pub supersedes_id: Option<Uuid>,
}

const EVALUATION_COLUMNS: &str = "id, year, quarter, model_version, revision, trigger, \
     published_at, run_by, reason, quarter_complete, subjects, subjects_graded, supersedes_id";

fn evaluation(row: &sqlx::postgres::PgRow) -> Result<EvaluationRecord, sqlx::Error> {
    let u = |v: i32| v.max(0) as u32;
    Ok(EvaluationRecord {
        id: row.try_get(0)?,
        year: row.try_get(1)?,
        quarter: u(i32::from(row.try_get::<i16, _>(2)?)),
        model_version: u(row.try_get(3)?),
        revision: u(row.try_get(4)?),
        trigger: row.try_get(5)?,
        published_at: row.try_get(6)?,
        run_by: row.try_get(7)?,
        reason: row.try_get(8)?,
        quarter_complete: row.try_get(9)?,
        subjects: u(row.try_get(10)?),
        subjects_graded: u(row.try_get(11)?),
        supersedes_id: row.try_get(12)?,
    })
}

/// Serialises evaluation runs across replicas for the rest of the transaction.
pub async fn lock_evaluations(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('scoring.evaluations'))")
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn evaluation_by_request(
    conn: &mut PgConnection,
    request_id: &str,
) -> Result<Option<EvaluationRecord>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {EVALUATION_COLUMNS} FROM scoring.evaluations WHERE request_id = $1"
    ))
    .bind(request_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(evaluation).transpose()
}

/// The latest revision of (model, quarter), if any.
pub async fn latest_revision(
    conn: &mut PgConnection,
    model_version: u32,
    year: i32,
    quarter: u32,
) -> Result<Option<EvaluationRecord>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {EVALUATION_COLUMNS} FROM scoring.evaluations
         WHERE model_version = $1 AND year = $2 AND quarter = $3
         ORDER BY revision DESC LIMIT 1"
    ))
    .bind(model_version as i32)
    .bind(year)
    .bind(quarter as i16)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(evaluation).transpose()
}

/// A complete evaluation of the quarter under any model, if one was published.
pub async fn complete_evaluation(
    conn: &mut PgConnection,
    year: i32,
    quarter: u32,
) -> Result<Option<EvaluationRecord>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {EVALUATION_COLUMNS} FROM scoring.evaluations
         WHERE year = $1 AND quarter = $2 AND quarter_complete
         ORDER BY published_at DESC LIMIT 1"
    ))
    .bind(year)
    .bind(quarter as i16)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(evaluation).transpose()
}

/// One published result row.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultRow {
    pub subject_kind: i16,
    pub subject_id: String,
    pub department_id: String,
    pub cases_opened: i64,
    pub score: ScoreCard,
}

/// Publishes an evaluation and its results.
pub async fn insert_evaluation(
    conn: &mut PgConnection,
    request_id: Option<&str>,
    record: &EvaluationRecord,
    results: &[ResultRow],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO scoring.evaluations (id, request_id, year, quarter, model_version, revision,
             trigger, published_at, run_by, reason, quarter_complete, subjects, subjects_graded,
             supersedes_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(record.id)
    .bind(request_id)
    .bind(record.year)
    .bind(record.quarter as i16)
    .bind(record.model_version as i32)
    .bind(record.revision as i32)
    .bind(record.trigger)
    .bind(record.published_at)
    .bind(&record.run_by)
    .bind(&record.reason)
    .bind(record.quarter_complete)
    .bind(record.subjects as i32)
    .bind(record.subjects_graded as i32)
    .bind(record.supersedes_id)
    .execute(&mut *conn)
    .await?;
    for chunk in results.chunks(5_000) {
        let kinds: Vec<i16> = chunk.iter().map(|r| r.subject_kind).collect();
        let ids: Vec<&str> = chunk.iter().map(|r| r.subject_id.as_str()).collect();
        let departments: Vec<&str> = chunk.iter().map(|r| r.department_id.as_str()).collect();
        let cases: Vec<i64> = chunk.iter().map(|r| r.cases_opened).collect();
        let totals: Vec<Option<f64>> = chunk.iter().map(|r| r.score.total).collect();
        let grades: Vec<i16> = chunk
            .iter()
            .map(|r| r.score.grade.map(|g| g.number()).unwrap_or(0))
            .collect();
        let scores: Vec<serde_json::Value> = chunk
            .iter()
            .map(|r| serde_json::to_value(&r.score).unwrap_or_default())
            .collect();
        sqlx::query(
            "INSERT INTO scoring.evaluation_results (evaluation_id, subject_kind, subject_id,
                 department_id, cases_opened, total, grade, score)
             SELECT $1, k, s, d, c, t, g, j
             FROM unnest($2::smallint[], $3::text[], $4::text[], $5::bigint[],
                         $6::float8[], $7::smallint[], $8::jsonb[]) AS r(k, s, d, c, t, g, j)",
        )
        .bind(record.id)
        .bind(&kinds)
        .bind(&ids)
        .bind(&departments)
        .bind(&cases)
        .bind(&totals)
        .bind(&grades)
        .bind(&scores)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Evaluations newest first, after the keyset `(published_at, id)`.
pub async fn evaluations(
    pool: &PgPool,
    year: Option<i32>,
    quarter: Option<u32>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<EvaluationRecord>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {EVALUATION_COLUMNS} FROM scoring.evaluations
         WHERE ($1::integer IS NULL OR year = $1) AND ($2::smallint IS NULL OR quarter = $2)
           AND ($3::timestamptz IS NULL OR (published_at, id) < ($3, $4))
         ORDER BY published_at DESC, id DESC LIMIT $5"
    ))
    .bind(year)
    .bind(quarter.map(|q| q as i16))
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(evaluation).collect()
}

pub async fn evaluation_by_id(
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<EvaluationRecord>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {EVALUATION_COLUMNS} FROM scoring.evaluations WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(evaluation).transpose()
}

pub struct ResultFilter<'a> {
    pub evaluation_id: Uuid,
    pub kind: Option<i16>,
    pub department_id: Option<&'a str>,
    pub subject_id: Option<&'a str>,
    pub after: Option<(i16, String)>,
    pub limit: i64,
}

pub async fn evaluation_results(
    pool: &PgPool,
    filter: &ResultFilter<'_>,
) -> Result<Vec<ResultRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT subject_kind, subject_id, department_id, cases_opened, score
         FROM scoring.evaluation_results
         WHERE evaluation_id = $1 AND ($2::smallint IS NULL OR subject_kind = $2)
           AND ($3::text IS NULL OR department_id = $3)
           AND ($4::text IS NULL OR subject_id = $4)
           AND ($5::smallint IS NULL OR (subject_kind, subject_id) > ($5, $6))
         ORDER BY subject_kind, subject_id LIMIT $7",
    )
    .bind(filter.evaluation_id)
    .bind(filter.kind)
    .bind(filter.department_id)
    .bind(filter.subject_id)
    .bind(filter.after.as_ref().map(|a| a.0))
    .bind(filter.after.as_ref().map(|a| a.1.as_str()))
    .bind(filter.limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let Json(score): Json<ScoreCard> = row.try_get(4)?;
            Ok(ResultRow {
                subject_kind: row.try_get(0)?,
                subject_id: row.try_get(1)?,
                department_id: row.try_get(2)?,
                cases_opened: row.try_get(3)?,
                score,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Rebuild.

/// Empties the read model and rewinds every cursor, in one transaction. Consumers notice the
/// moved cursor on their next batch and replay from the first event. Rewinding first waits for
/// any batch in flight (it holds its cursor row) so none lands on the emptied tables.
pub async fn rebuild_read_model(pool: &PgPool) -> Result<(u64, u32), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rewound =
        sqlx::query("UPDATE scoring.event_cursors SET txid = 0, seq = 0, updated_at = now()")
            .execute(&mut *tx)
            .await?
            .rows_affected();
    let (cases,): (i64,) = sqlx::query_as("SELECT count(*) FROM scoring.case_facts")
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("TRUNCATE scoring.case_facts, scoring.daily_aggregates, scoring.daily_categories")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((cases.max(0) as u64, rewound as u32))
}
