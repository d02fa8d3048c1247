//! Reads over the pre-aggregated tables: a scorecard, a department leaderboard, a trend point.
//! Each sums the daily rows of the period (a quarter is ~92 rows per subject) and applies the
//! domain formulas; nothing here scans case facts.

use chrono::NaiveDate;
use sqlx::PgPool;

use crate::domain::facts::ORGANISATION;
use crate::domain::kpi::{Counters, Indicators};
use crate::domain::model::{self, ScoreCard};
use crate::domain::period::Period;
use crate::domain::ranking::{self, Ranked};
use crate::store::{self, OrderFigures, Scope, StoredModel};

pub struct ScorecardFigures {
    pub counters: Counters,
    pub indicators: Indicators,
    pub categories: Vec<(String, i16, i64)>,
    /// Organisation only.
    pub orders: Option<OrderFigures>,
    pub score: ScoreCard,
}

pub async fn scorecard(
    pool: &PgPool,
    scope: &Scope<'_>,
    scoring_model: &StoredModel,
) -> Result<ScorecardFigures, sqlx::Error> {
    let counters = store::sum_counters(pool, scope).await?;
    let categories = store::category_counts(pool, scope).await?;
    let orders = if scope.kind == ORGANISATION {
        Some(store::order_figures(pool, scope.first, scope.end_exclusive).await?)
    } else {
        None
    };
    let indicators = Indicators::from_counters(&counters);
    let score = model::score(
        scoring_model.version,
        &scoring_model.definition,
        &indicators,
    );
    Ok(ScorecardFigures {
        counters,
        indicators,
        categories,
        orders,
        score,
    })
}

/// Agents (or teams) of a department ranked on that department's cases over the period.
pub async fn leaderboard(
    pool: &PgPool,
    kind: i16,
    department_id: &str,
    period: &Period,
    scoring_model: &StoredModel,
) -> Result<Vec<Ranked>, sqlx::Error> {
    let subjects = store::department_subjects(
        pool,
        kind,
        department_id,
        period.first,
        period.end_exclusive(),
        scoring_model.definition.uses_histogram(),
    )
    .await?;
    let scored = subjects
        .into_iter()
        .filter(|(_, c)| c.cases_opened > 0)
        .map(|(subject_id, counters)| {
            let indicators = Indicators::from_counters(&counters);
            let score = model::score(
                scoring_model.version,
                &scoring_model.definition,
                &indicators,
            );
            (subject_id, indicators.cases_opened, score)
        })
        .collect();
    Ok(ranking::rank(scored))
}

pub struct TrendFigures {
    pub period: Period,
    pub indicators: Indicators,
    pub orders: Option<OrderFigures>,
}

pub async fn trend_point(
    pool: &PgPool,
    kind: i16,
    subject_id: &str,
    department_id: Option<&str>,
    period: Period,
) -> Result<TrendFigures, sqlx::Error> {
    let scope = Scope {
        kind,
        subject_id,
        department_id,
        first: period.first,
        end_exclusive: period.end_exclusive(),
    };
    let counters = store::sum_counters(pool, &scope).await?;
    let orders = if kind == ORGANISATION {
        Some(store::order_figures(pool, period.first, period.end_exclusive()).await?)
    } else {
        None
    };
    Ok(TrendFigures {
        period,
        indicators: Indicators::from_counters(&counters),
        orders,
    })
}

/// The periods of `kind` overlapping `[from, to]`.
pub fn periods_between(
    kind: crate::domain::period::PeriodKind,
    from: NaiveDate,
    to: NaiveDate,
    limit: usize,
) -> Option<Vec<Period>> {
    let mut periods = Vec::new();
    let mut period = Period::containing(kind, from);
    while period.first <= to {
        if periods.len() == limit {
            return None;
        }
        periods.push(period);
        period = period.next();
    }
    Some(periods)
}
