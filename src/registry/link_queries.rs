//! The dashboards' reads of the links table: the filter they share, a filtered
//! listing paged by keyset, and the outstanding links per key for the metrics
//! gauge (summaries: `link_summary`).
//!
//! Filters are bound parameters (`QueryBuilder::push_bind`); the only SQL text
//! chosen at run time comes from enums. Listing walks `(issued_at DESC, id DESC)`
//! and an equality filter picks the index that starts with its column (bucket,
//! caller, key_id: migrations 0001 and 0003), so a page reads about `limit`
//! index entries however deep the cursor is, unless the filters left on
//! top (state, prefix, expiry window) reject most rows. Without an equality
//! filter the walk's index, `links_by_issued`, ends with expires_at (0020): a
//! state's or an expiry window's condition on it is tested in the index, and
//! only the rows that pass it are read. That index is ascending (0021: new
//! links land on its rightmost leaf, which keeps it dense) and a listing
//! scans it backwards. An object key prefix is a range of its own index
//! (0006): when few links match, the planner fetches them and sorts instead,
//! which is why such a page is planned for its parameters every time
//! (`list_page`), and a prefix's page per day of expiry (`read_slice`). An
//! expiry window prunes the partitions (the table is partitioned by
//! expires_at) and is tested in `links_by_issued`; its own index went (0022).
//! A signer is its keys (a link's signer is its key's): its page merges one
//! walk of `links_by_key_issued` per key that signed in the slice
//! (`read_slice`), and its own index went (0023).

use super::error::{During, Error};
use super::links::{LinkRow, select_sql};
use super::partitions::{Table, utc};
use crate::domain::LinkState;
use crate::paging::Cursor;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, QueryBuilder};

use super::states::KEY_DEAD;

/// `STATE_SQL = 'x'` spelled out per state, so the planner sees plain predicates
/// (tests check that both always agree).
fn state_predicate(state: LinkState) -> String {
    match state {
        LinkState::Revoked => format!("({KEY_DEAD} OR l.revocation_id IS NOT NULL)"),
        LinkState::Expired => {
            format!("(NOT {KEY_DEAD} AND l.revocation_id IS NULL AND l.expires_at <= now())")
        }
        LinkState::Active => {
            format!("(NOT {KEY_DEAD} AND l.revocation_id IS NULL AND l.expires_at > now())")
        }
    }
}

/// Which links to read. Every field narrows; `None` does not filter. Validated by
/// the caller (`dashboard`); serialized to bind page tokens to their filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LinkFilter {
    pub state: Option<LinkState>,
    pub bucket: Option<String>,
    pub object_key_prefix: Option<String>,
    pub caller: Option<String>,
    pub key_id: Option<String>,
    pub signer: Option<String>,
    /// Inclusive.
    pub expires_after: Option<DateTime<Utc>>,
    /// Exclusive.
    pub expires_before: Option<DateTime<Utc>>,
}

impl LinkFilter {
    /// Whether the filter holds a range that is not an equality on a link's
    /// columns: an object key prefix or an expiry window. How many links such
    /// a range matches varies with its values (so listings plan it each time),
    /// and a roll-up cell cannot answer it (so summaries count link by link).
    pub fn has_ranges(&self) -> bool {
        self.object_key_prefix.is_some()
            || self.expires_after.is_some()
            || self.expires_before.is_some()
    }
}

/// A link's position in `(issued_at DESC, id DESC)`.
impl From<&LinkRow> for Cursor {
    fn from(row: &LinkRow) -> Self {
        Self {
            at: row.issued_at,
            id: row.id,
        }
    }
}

/// A link lives at most this long (`links_live_at_most_7_days` in 0003).
const MAX_LIFETIME_SECS: i64 = crate::domain::MAX_TTL.as_secs() as i64;

/// Conditions every link in `state` meets without looking at its key, so a
/// query on `links` alone can narrow by them.
pub(super) fn state_necessary(state: LinkState) -> String {
    match state {
        LinkState::Active => format!(
            "(l.revocation_id IS NULL AND l.expires_at > now()
              AND l.issued_at > now() - make_interval(secs => {MAX_LIFETIME_SECS}))"
        ),
        LinkState::Expired => "(l.revocation_id IS NULL AND l.expires_at <= now())".into(),
        LinkState::Revoked => "TRUE".into(),
    }
}

/// The smallest string greater than every string that starts with `prefix`,
/// in byte order (UTF-8 byte order is code point order, and Postgres compares
/// `COLLATE "C"` text by bytes). None if there is none: every char is
/// `char::MAX` (or the prefix is empty), and the range has no upper end.
///
/// The last char that can grow grows by one scalar value (skipping the
/// surrogates, which are not chars); the chars after it, all `char::MAX`, go.
/// Then `s.starts_with(prefix) == (prefix <= s && s < successor)`.
pub(crate) fn prefix_successor(prefix: &str) -> Option<String> {
    let mut s = prefix.to_owned();
    while let Some(c) = s.pop() {
        let next = match c {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(c as u32 + 1),
        };
        if let Some(next) = next {
            s.push(next);
            return Some(s);
        }
    }
    None
}

/// `filter` as conditions on `links l` (and, for a state, `signing_keys k`).
pub(super) fn push_filter(q: &mut QueryBuilder<Postgres>, f: &LinkFilter) {
    q.push(" WHERE TRUE");
    if let Some(state) = f.state {
        q.push(" AND ")
            .push(state_predicate(state))
            .push(" AND ")
            .push(state_necessary(state));
    }
    // Bounds on issued_at implied by the filter and the 7-day lifetime: they
    // let a scan in issued_at order stop where no more link can match.
    if let Some(t) = f
        .expires_after
        .and_then(|t| t.checked_sub_signed(TimeDelta::seconds(MAX_LIFETIME_SECS)))
    {
        q.push(" AND l.issued_at >= ").push_bind(t);
    }
    if let Some(t) = f.expires_before {
        q.push(" AND l.issued_at < ").push_bind(t);
    }
    if let Some(v) = &f.bucket {
        q.push(" AND l.bucket = ").push_bind(v.clone());
    }
    if let Some(v) = &f.object_key_prefix {
        // The keys starting with the prefix, as the range of byte order they
        // fill (`prefix_successor`): links_by_object_key (0006) serves it, so
        // the planner can fetch a rare prefix's few links instead of scanning
        // in issued_at order for them. Bound parameters, not LIKE: '%' and '_'
        // are plain characters. Exact on its own, so no starts_with beside it:
        // the planner would count the same selectivity twice (the square of the
        // prefix's share) and fetch a broad prefix's links instead of walking.
        q.push(" AND l.object_key COLLATE \"C\" >= ")
            .push_bind(v.clone());
        if let Some(upper) = prefix_successor(v) {
            q.push(" AND l.object_key COLLATE \"C\" < ")
                .push_bind(upper);
        }
    }
    if let Some(v) = &f.caller {
        q.push(" AND l.caller = ").push_bind(v.clone());
    }
    if let Some(v) = &f.key_id {
        q.push(" AND l.key_id = ").push_bind(v.clone());
    }
    if let Some(v) = &f.signer {
        q.push(" AND l.signer = ").push_bind(v.clone());
    }
    if let Some(t) = f.expires_after {
        q.push(" AND l.expires_at >= ").push_bind(t);
    }
    if let Some(t) = f.expires_before {
        q.push(" AND l.expires_at < ").push_bind(t);
    }
}

/// The first slice of a page reaches this far back from its start; each
/// next one twice as far as the one before.
const FIRST_SLICE: TimeDelta = TimeDelta::days(1);

/// Up to `limit` links matching `filter`, newest first (`issued_at DESC, id
/// DESC`), strictly after `after`. Rows inserted while a client pages never shift
/// the rows it has not seen yet: the cursor is a position, not an offset.
///
/// `links` is partitioned by day of expires_at, the order is issued_at, and
/// a link lives at most 7 days: the links issued in [lo, hi) all expire in
/// (lo, hi + 7 days]. So a page is read in slices of issued_at, newest first,
/// each bounded on expires_at too, and each planned for its values (never a
/// cached generic plan): the planner prunes a slice to the ~9 partitions that
/// can hold it, so planning and running it cost the same at 75 partitions as
/// at 9, and a filter's bad guess (a key common in one partition but not
/// among its newest rows) reads one slice of that partition, not all of it.
/// A dense filter fills the page in the first slice; a sparse one goes on,
/// each slice reaching twice as far back, down to the oldest link issued (the
/// last slice has no lower end). Some pages need no walk (`Probe`): a key id
/// the roll-up holds no cell of has no link, a prefix no object key has
/// matches nothing, and a cursor below the floor an ACTIVE state or an expiry
/// window implies has nothing after it. A walk that comes back short stops
/// at the oldest link, and EXPIRED's at the live keys' oldest
/// (`keys_floor`). Before each slice the walk skips to the newest instant a
/// matching link can have (`newest_below`): a stopped key's links are all in
/// its window (signing_keys.signed_from/until, 0019), a signer's in its
/// keys' windows, REVOKED's in the dead keys' windows or marked. The slices
/// tile what is
/// left of issued_at without overlap, skipping only what holds no match, and
/// all run in one snapshot with the key states, windows and roll-up they
/// depend on, so the page is exactly what one query would return.
pub async fn list_page(
    pool: &PgPool,
    filter: &LinkFilter,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Vec<LinkRow>, Error> {
    const WHAT: &str = "link_queries::list_page";
    let mut tx = super::begin_snapshot(pool).await?;
    // A state is a set of keys (plus, for REVOKED, the marked links): as a
    // condition on links' own key_id, the planner estimates it per partition
    // and picks the key's index where the key is rare.
    let keys = match filter.state {
        Some(state) => Some(keys_of(&mut tx, state).await?),
        None => None,
    };
    let probe = Probe::of(&mut tx, filter).await?;
    // A signer's links are its keys' (a key id in the filter is walked alone).
    let signer = match (&filter.signer, &filter.key_id) {
        (Some(signer), None) => Some(signer_keys(&mut tx, signer).await?),
        _ => None,
    };
    let mut rows: Vec<LinkRow> = Vec::new();
    // A prefix no object key has: one probe (0.3 ms at 77 partitions) instead
    // of planning a slice's parts first (7 ms at 6M links over 60 days).
    if probe.is_empty()
        || signer.as_ref().is_some_and(|s| s.keys.is_empty())
        || !probe.prefix_exists(&mut tx).await?
    {
        tx.commit().await.during(WHAT)?;
        return Ok(rows);
    }
    let mut floor: Option<Option<DateTime<Utc>>> = None;
    // Below the floor a state or an expiry window implies, nothing matches:
    // a cursor there gets an empty page without reading a slice.
    if let Some(c) = after
        && (filter.state == Some(LinkState::Active) || filter.expires_after.is_some())
    {
        let f = *floor.insert(oldest_issued(&mut tx, filter).await?);
        // Strictly below: a link issued at the cursor's instant with a smaller
        // id is still after it.
        if f.is_none_or(|f| c.at < f) {
            tx.commit().await.during(WHAT)?;
            return Ok(rows);
        }
    }
    // `top`: the exclusive upper end of what is left to read (the cursor's
    // instant included: its ties with a smaller id come after it); None: now.
    let mut top: Option<DateTime<Utc>> = after.map(|c| c.at + TICK);
    let mut width = FIRST_SLICE;
    let mut checked_keys = false;
    let sets = Sets {
        state: keys.as_ref(),
        signer: signer.as_ref(),
    };
    loop {
        // Skip to the newest instant a matching link can have: the end of a
        // stopped key's window, the newest link a revocation marked.
        let Some(hi) = newest_below(&mut tx, &probe, signer.as_ref(), keys.as_ref(), top).await?
        else {
            break;
        };
        top = hi;
        let start = top.unwrap_or_else(Utc::now);
        let lo = start
            .checked_sub_signed(width)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let oldest = floor_of(&probe, floor);
        let last = oldest.is_some_and(|f| f.is_none_or(|f| lo <= f));
        let slice = Slice {
            // The last slice ends at the floor, if any: all its links are after.
            lo: if last { oldest.flatten() } else { Some(lo) },
            hi: top,
        };
        let need = limit - rows.len() as i64;
        rows.extend(read_slice(&mut tx, filter, sets, after, slice, need).await?);
        if rows.len() as i64 >= limit || last {
            break;
        }
        if floor.is_none() {
            floor = Some(oldest_issued(&mut tx, filter).await?);
        }
        let below = |floor| floor_of(&probe, floor).is_some_and(|f| f.is_none_or(|f| f >= lo));
        if below(floor) {
            // Nothing was issued before this slice.
            break;
        }
        // Nor, for EXPIRED, before the live keys' oldest link: read once,
        // and only when the oldest link does not end the walk already.
        if let Some(set) = keys
            .as_ref()
            .filter(|_| filter.state == Some(LinkState::Expired))
            && !std::mem::replace(&mut checked_keys, true)
        {
            let of_keys = keys_floor(&mut tx, set).await?;
            floor = floor.map(|f| match (f, of_keys) {
                (Some(f), Some(k)) => Some(f.max(k)),
                // No link at all, or no EXPIRED one of a live key.
                _ => None,
            });
            if below(floor) {
                break;
            }
        }
        top = Some(lo);
        width = width * 2;
    }
    tx.commit().await.during(WHAT)?;
    Ok(rows)
}

/// What the registry knows, besides the slices, of where a filter's links
/// are. Read in the page's snapshot.
enum Probe {
    /// Every matching link is a link of this key, and it has one if the
    /// roll-up holds a cell of it; issued in its window if it stopped signing.
    Key { has_links: bool, window: Window },
    /// Every matching link's object key has this prefix.
    Prefix { prefix: String },
    /// Nothing known.
    Nothing,
}

impl Probe {
    async fn of(conn: &mut PgConnection, filter: &LinkFilter) -> Result<Self, Error> {
        if let Some(key) = &filter.key_id {
            // The roll-up (0005) is kept by triggers in the transactions that
            // write the links: a key with a link in this snapshot has a cell
            // (one probe of its primary key, the deltas not folded yet). The
            // window: one probe of signing_keys' primary key.
            let (has_links, from, until, known): (bool, _, _, bool) =
                sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT EXISTS (SELECT FROM link_rollup c WHERE c.key_id = $1)
                     OR EXISTS (SELECT FROM link_rollup_delta d WHERE d.key_id = $1),
                        w.f, w.u, coalesce(w.known, false)
                 FROM (SELECT) one
                 LEFT JOIN (SELECT {WINDOW_SQL}
                            FROM signing_keys WHERE key_id = $1) w (f, u, known) ON TRUE"
                )))
                .bind(key)
                .fetch_one(conn)
                .await
                .during("link_queries::probe")?;
            let window = Window::of(known, from, until);
            return Ok(Self::Key {
                has_links: has_links && window != Window::Empty,
                window,
            });
        }
        Ok(match &filter.object_key_prefix {
            Some(prefix) => Self::Prefix {
                prefix: prefix.clone(),
            },
            None => Self::Nothing,
        })
    }

    /// No link can match.
    fn is_empty(&self) -> bool {
        matches!(
            self,
            Self::Key {
                has_links: false,
                ..
            }
        )
    }

    /// The key's window, if the filter names a key that stopped signing.
    fn window(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        match self {
            Self::Key {
                window: Window::Within(from, until),
                ..
            } => Some((*from, *until)),
            _ => None,
        }
    }

    /// Whether any link's object key has the prefix: one probe of each
    /// partition's links_by_object_key, with a generic plan made once per
    /// connection (the range is an index condition whatever its values, and
    /// planning 75 partitions for each page costs more than probing them).
    async fn prefix_exists(&self, conn: &mut PgConnection) -> Result<bool, Error> {
        let Self::Prefix { prefix } = self else {
            return Ok(true);
        };
        // The range as index conditions (a NULL upper end in an OR would
        // leave the scan open to the end of the index).
        let sql = match prefix_successor(prefix) {
            Some(_) => {
                "SELECT EXISTS (SELECT FROM links l
                                WHERE l.object_key COLLATE \"C\" >= $1
                                  AND l.object_key COLLATE \"C\" < $2)"
            }
            None => {
                "SELECT EXISTS (SELECT FROM links l
                                WHERE l.object_key COLLATE \"C\" >= $1 AND $2::text IS NULL)"
            }
        };
        generic_plans(conn, true).await?;
        let exists = sqlx::query_scalar(sql)
            .bind(prefix)
            .bind(prefix_successor(prefix))
            .fetch_one(&mut *conn)
            .await
            .during("link_queries::prefix_exists");
        generic_plans(conn, false).await?;
        exists
    }
}

/// Plans this transaction's next statements once, for any values (on), or
/// as the server decides (off): a slice must be planned for its values.
async fn generic_plans(conn: &mut PgConnection, on: bool) -> Result<(), Error> {
    let mode = if on { "force_generic_plan" } else { "auto" };
    sqlx::query("SELECT set_config('plan_cache_mode', $1, true)")
        .bind(mode)
        .execute(conn)
        .await
        .during("link_queries::generic_plans")
        .map(|_| ())
}

/// A range of issued_at, [lo, hi); None: no end on that side.
#[derive(Debug, Clone, Copy)]
struct Slice {
    lo: Option<DateTime<Utc>>,
    hi: Option<DateTime<Utc>>,
}

/// The keys whose links can be in `state`: dead ones for REVOKED (with the
/// links a revocation marked, whatever their key), live ones otherwise; each
/// with its window (0019).
async fn keys_of(conn: &mut PgConnection, state: LinkState) -> Result<KeySet, Error> {
    let dead = state == LinkState::Revoked;
    let rows: Vec<KeyWindow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT key_id, {WINDOW_SQL} FROM signing_keys k WHERE {}({KEY_DEAD})",
        if dead { "" } else { "NOT " }
    )))
    .fetch_all(conn)
    .await
    .during("link_queries::keys_of")?;
    Ok(KeySet::of(dead, rows))
}

/// The keys of `signer`, each with its window (0019). Every link's signer is
/// its key's: `links_record` checks it (0017), and the issuer has always
/// taken both from the key.
async fn signer_keys(conn: &mut PgConnection, signer: &str) -> Result<KeySet, Error> {
    let rows: Vec<KeyWindow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT key_id, {WINDOW_SQL} FROM signing_keys WHERE signer = $1 ORDER BY key_id"
    )))
    .bind(signer)
    .fetch_all(conn)
    .await
    .during("link_queries::signer_keys")?;
    Ok(KeySet::of(false, rows))
}

/// A key's window as a query reads it, for `Window::of`: `signed_from`,
/// `signed_until` (both NULL for an empty range) and `known`.
const WINDOW_SQL: &str =
    "CASE WHEN signed_from <= signed_until THEN signed_from END AS signed_from,
     CASE WHEN signed_from <= signed_until THEN signed_until END AS signed_until,
     signed_until IS NOT NULL AS known";

/// A key and its window as `keys_of` reads them (an empty range: both None).
#[derive(sqlx::FromRow)]
struct KeyWindow {
    key_id: String,
    signed_from: Option<DateTime<Utc>>,
    signed_until: Option<DateTime<Utc>>,
    known: bool,
}

struct KeySet {
    dead: bool,
    keys: Vec<String>,
    /// Each key's, in the same order.
    windows: Vec<Window>,
}

impl KeySet {
    fn of(dead: bool, rows: Vec<KeyWindow>) -> Self {
        let windows = rows
            .iter()
            .map(|r| Window::of(r.known, r.signed_from, r.signed_until))
            .collect();
        Self {
            dead,
            keys: rows.into_iter().map(|r| r.key_id).collect(),
            windows,
        }
    }

    /// The exclusive upper end of where its keys' links below `top` can be
    /// (`Window::newest_below`), None if nowhere.
    fn newest_below(&self, top: Option<DateTime<Utc>>) -> Option<Option<DateTime<Utc>>> {
        let mut newest = None;
        for w in &self.windows {
            let Some(t) = w.newest_below(top) else {
                continue;
            };
            if t == top {
                return Some(top);
            }
            newest = newest.max(Some(t));
        }
        newest
    }
}

/// The key sets a slice is read with: the state's (its condition on key_id)
/// and the signer's (one part per key).
#[derive(Clone, Copy)]
struct Sets<'a> {
    state: Option<&'a KeySet>,
    signer: Option<&'a KeySet>,
}

/// Where a key's links are in issued_at (signing_keys.signed_from,
/// signed_until: recorded when it stopped signing, exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// It may still sign, or the range was never recorded.
    Unknown,
    /// It signed nothing.
    Empty,
    /// Every link it signed was issued in [from, until].
    Within(DateTime<Utc>, DateTime<Utc>),
}

impl Window {
    fn of(known: bool, from: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>) -> Self {
        match (known, from, until) {
            (false, ..) => Self::Unknown,
            (true, Some(from), Some(until)) => Self::Within(from, until),
            (true, ..) => Self::Empty,
        }
    }

    /// Whether it can hold a link issued in `slice`.
    fn meets(self, slice: &Slice) -> bool {
        match self {
            Self::Unknown => true,
            Self::Empty => false,
            Self::Within(from, until) => {
                slice.hi.is_none_or(|hi| from < hi) && slice.lo.is_none_or(|lo| until >= lo)
            }
        }
    }

    /// The exclusive upper end of where its links below `top` (exclusive;
    /// None: no end) can be; None if none can be.
    fn newest_below(self, top: Option<DateTime<Utc>>) -> Option<Option<DateTime<Utc>>> {
        match self {
            Self::Unknown => Some(top),
            Self::Empty => None,
            Self::Within(from, _) if top.is_some_and(|t| t <= from) => None,
            Self::Within(_, until) => Some(Some(top.map_or(until + TICK, |t| t.min(until + TICK)))),
        }
    }
}

/// The finest step of a timestamptz.
const TICK: TimeDelta = TimeDelta::microseconds(1);

/// The exclusive upper end of where a link matching the page's filter can be
/// below `top` (None: no end), None if nowhere: the key's window for a key
/// id, the newest of its keys' windows for a signer; for REVOKED, the newest
/// of the dead keys' windows and of the links a revocation marked (one probe
/// of each partition's links_marked_by_revocation, only when the windows
/// leave a gap to jump).
async fn newest_below(
    conn: &mut PgConnection,
    probe: &Probe,
    signer: Option<&KeySet>,
    keys: Option<&KeySet>,
    top: Option<DateTime<Utc>>,
) -> Result<Option<Option<DateTime<Utc>>>, Error> {
    let top = match &probe {
        Probe::Key { window, .. } => match window.newest_below(top) {
            Some(t) => t,
            None => return Ok(None),
        },
        _ => top,
    };
    let top = match signer.map(|s| s.newest_below(top)) {
        Some(None) => return Ok(None),
        Some(Some(t)) => t,
        None => top,
    };
    let Some(set) = keys.filter(|s| s.dead) else {
        return Ok(Some(top));
    };
    let newest = set.newest_below(top);
    if newest == Some(top) {
        return Ok(newest);
    }
    // A marked link below `top` but above the dead keys' windows?
    let sql = match top {
        Some(_) => {
            "SELECT max(l.issued_at) FROM links l
             WHERE l.revocation_id IS NOT NULL AND l.issued_at < $1"
        }
        None => {
            "SELECT max(l.issued_at) FROM links l
             WHERE l.revocation_id IS NOT NULL AND $1::timestamptz IS NULL"
        }
    };
    generic_plans(conn, true).await?;
    let marked: Result<Option<DateTime<Utc>>, Error> = sqlx::query_scalar(sql)
        .bind(top)
        .fetch_one(&mut *conn)
        .await
        .during("link_queries::newest_marked");
    generic_plans(conn, false).await?;
    let marked = marked?.map(|t| Some(t + TICK));
    Ok(newest.max(marked))
}

/// The floor a page's walk stops at (`oldest_issued`, None while not read;
/// Some(None): no link), raised to the start of the key's window.
fn floor_of(probe: &Probe, floor: Option<Option<DateTime<Utc>>>) -> Option<Option<DateTime<Utc>>> {
    match (floor, probe.window()) {
        (None, None) => None,
        (None, Some((from, _))) => Some(Some(from)),
        (Some(f), None) => Some(f),
        (Some(None), Some(_)) => Some(None),
        (Some(Some(f)), Some((from, _))) => Some(Some(f.max(from))),
    }
}

/// The oldest issued_at a link matching `filter` can have, None if there is
/// no link: the oldest link's (one probe of each partition's links_by_issued,
/// a cached plan: it has no parameter), or later if the filter says so (an
/// ACTIVE link was issued in the last 7 days of the transaction's `now()`,
/// which its state predicate uses too; a link expiring after t was issued
/// after t − 7 days).
async fn oldest_issued(
    conn: &mut PgConnection,
    filter: &LinkFilter,
) -> Result<Option<DateTime<Utc>>, Error> {
    let (oldest, now): (Option<DateTime<Utc>>, DateTime<Utc>) =
        sqlx::query_as("SELECT min(issued_at), now() FROM links")
            .fetch_one(conn)
            .await
            .during("link_queries::oldest_issued")?;
    let lifetime = TimeDelta::seconds(MAX_LIFETIME_SECS);
    let implied = [
        (filter.state == Some(LinkState::Active)).then(|| now - lifetime),
        filter
            .expires_after
            .and_then(|t| t.checked_sub_signed(lifetime)),
    ];
    Ok(oldest.map(|o| implied.into_iter().flatten().fold(o, DateTime::max)))
}

/// A bound below every EXPIRED link of the (live) keys in `set`: the oldest
/// issued_at of their links that expire before tomorrow (UTC), None if they
/// have none. A key that stopped signing gives its window's start; each
/// other one (active, pending) is probed: per key, one descent of the key's
/// index in each partition of today and before (the later ones are pruned
/// when the statement starts), with a generic plan made once per
/// connection (1-3 ms at 77 partitions, 60M links). An EXPIRED page whose
/// walk goes past the live keys' links (links that old are all of deleted
/// or inactive keys, so REVOKED) stops there instead of walking every
/// older day: at 60M links over 60 days, 19-30 ms for no row before, 5-6
/// ms after (docs/BENCHMARKS.md). Not for ACTIVE: its 7 days bound it
/// already, and closer.
///
/// Why this bound, measured at 60M links: without one, the generic plan
/// walks `links_by_issued` for a key in the partitions that were empty when
/// it was made (days ahead, and a partition then filling can still be
/// planned that way: a key absent from it reads all of it); with `issued_at
/// < the slice` it walked `links_by_issued` everywhere (27 s). With this
/// one, every partition descends the key's index, and every link in the
/// partitions kept passes it, so a descent stops at its first entry. (Why
/// a generic plan for a key's links needs care: docs/ARCHITECTURE.md.)
async fn keys_floor(conn: &mut PgConnection, set: &KeySet) -> Result<Option<DateTime<Utc>>, Error> {
    let windows = || set.keys.iter().zip(&set.windows);
    let oldest = windows()
        .filter_map(|(_, w)| match w {
            Window::Within(from, _) => Some(*from),
            _ => None,
        })
        .min();
    let unknown: Vec<&str> = windows()
        .filter(|(_, w)| **w == Window::Unknown)
        .map(|(key, _)| key.as_str())
        .collect();
    if unknown.is_empty() {
        return Ok(oldest);
    }
    generic_plans(conn, true).await?;
    let probed: Result<Option<DateTime<Utc>>, Error> = sqlx::query_scalar(
        "SELECT min(x.oldest) FROM unnest($1::text[]) AS k (key_id),
         LATERAL (SELECT min(l.issued_at) AS oldest FROM links l
                  WHERE l.key_id = k.key_id
                    AND l.expires_at < (date_trunc('day', now() AT TIME ZONE 'UTC')
                                        + interval '1 day') AT TIME ZONE 'UTC') x",
    )
    .bind(&unknown)
    .fetch_one(&mut *conn)
    .await
    .during("link_queries::keys_floor");
    generic_plans(conn, false).await?;
    Ok([oldest, probed?].into_iter().flatten().min())
}

/// The links of `filter` in `slice` after `after`, newest first, in one
/// statement. With an object key prefix and no equality filter, a UNION ALL
/// of one part per day of expiry the slice can reach (`expiry_days`), each
/// ordered and limited on its own, merged in order; with a signer (and no
/// key id), one part per key of the signer that can have a link in the
/// slice, each walking `links_by_key_issued`, merged the same way (the
/// signer's own index went in 0023: every link inserted an entry into it).
///
/// Why parts: on the partitioned table the planner merges one index walk in
/// issued_at order per partition, and never sorts a partition's few matches
/// from another index instead (PostgreSQL 15 considers an explicit sort only
/// for a partition with no index in that order). After a burst of other
/// keys' links, a broad prefix is rare among today's newest links, which
/// the walk then read one by one: 140 ms a page (docs/BENCHMARKS.md). A part
/// is one day of expiry, so one partition, planned on its own statistics:
/// where the prefix is rare it fetches the matches from links_by_object_key
/// and sorts them; elsewhere it walks, pulled only as far as the merge
/// needs. Where the prefix is common in a partition but absent from its
/// newest links, the part still walks them: the statistics cannot tell.
/// The other filters keep the single statement: the parts cost each page
/// ~2 ms of planning, and for them the walk is the right plan or (a state
/// with an equality filter after a burst) the planner cannot tell either.
async fn read_slice(
    conn: &mut PgConnection,
    filter: &LinkFilter,
    sets: Sets<'_>,
    after: Option<Cursor>,
    slice: Slice,
    limit: i64,
) -> Result<Vec<LinkRow>, Error> {
    // A signer's keys that can have a link here: in the state's set too
    // (REVOKED's includes the marked links of any key), their window meeting
    // the slice. None of them: nothing to read.
    let signer_keys: Option<Vec<&str>> = sets.signer.map(|s| {
        s.keys
            .iter()
            .zip(&s.windows)
            .filter(|(key, w)| {
                w.meets(&slice)
                    && sets
                        .state
                        .is_none_or(|set| set.dead || set.keys.contains(key))
            })
            .map(|(key, _)| key.as_str())
            .collect()
    });
    if signer_keys.as_ref().is_some_and(|k| k.is_empty()) {
        return Ok(Vec::new());
    }
    // expires_at in (issued_at, issued_at + 7 days] (0003's checks; an hour
    // more in case the session's time zone has a daylight saving change).
    let ceiling = slice
        .hi
        .or(after.map(|c| c.at))
        .map(|top| top + TimeDelta::seconds(MAX_LIFETIME_SECS) + TimeDelta::hours(1));
    // A prefix alone: with an equality filter the walk is that filter's
    // index, and parts measured 3-5 ms slower a page (bucket + prefix).
    let equality = filter.bucket.is_some()
        || filter.caller.is_some()
        || filter.key_id.is_some()
        || filter.signer.is_some();
    let days = match filter.object_key_prefix {
        Some(_) if !equality => expiry_days(slice.lo, ceiling, Utc::now()),
        _ => Vec::new(),
    };
    // One part per key of the signer, each a walk of its key's index in
    // issued_at order; past MAX_KEY_PARTS keys (a signer rotating every hour
    // or so), one part for all of them, left to the planner.
    let (keys_of_parts, keys_in_all): (Vec<Option<&str>>, Option<Vec<&str>>) = match signer_keys {
        Some(keys) if keys.len() <= MAX_KEY_PARTS => (keys.into_iter().map(Some).collect(), None),
        keys => (vec![None], keys),
    };
    let parts: Vec<(Part, Option<&str>)> = parts(&days)
        .into_iter()
        .flat_map(|p| keys_of_parts.iter().map(move |k| (p, *k)))
        .collect();
    let mut q = QueryBuilder::new("");
    if parts.len() > 1 {
        q.push("SELECT * FROM (");
    }
    for (n, ((from, until), key)) in parts.iter().enumerate() {
        if n > 0 {
            q.push(" UNION ALL ");
        }
        if parts.len() > 1 {
            q.push("(");
        }
        q.push(select_sql(""));
        push_slice(&mut q, filter, sets.state, after, &slice, ceiling);
        if let Some(from) = from {
            q.push(" AND l.expires_at >= ").push_bind(*from);
        }
        if let Some(until) = until {
            q.push(" AND l.expires_at < ").push_bind(*until);
        }
        if let Some(key) = key {
            q.push(" AND l.key_id = ").push_bind(key.to_string());
        }
        if let Some(keys) = &keys_in_all {
            q.push(" AND l.key_id = ANY(")
                .push_bind(keys.iter().map(|k| k.to_string()).collect::<Vec<_>>())
                .push(")");
        }
        q.push(" ORDER BY l.issued_at DESC, l.id DESC LIMIT ")
            .push_bind(limit);
        if parts.len() > 1 {
            q.push(")");
        }
    }
    if parts.len() > 1 {
        q.push(") page ORDER BY issued_at DESC, id DESC LIMIT ")
            .push_bind(limit);
    }
    // Planned for its values every time (an unnamed statement): a generic
    // plan would neither prune at plan time nor see which keys, buckets or
    // prefixes are rare in which partition.
    q.build_query_as()
        .persistent(false)
        .fetch_all(conn)
        .await
        .during("link_queries::list_page")
}

/// The WHERE clause of a slice's part, but for its day of expiry.
fn push_slice(
    q: &mut QueryBuilder<Postgres>,
    filter: &LinkFilter,
    keys: Option<&KeySet>,
    after: Option<Cursor>,
    slice: &Slice,
    ceiling: Option<DateTime<Utc>>,
) {
    push_filter(q, filter);
    if let Some(set) = keys {
        q.push(" AND (l.key_id = ANY(")
            .push_bind(set.keys.clone())
            .push(")");
        if set.dead {
            q.push(" OR l.revocation_id IS NOT NULL");
        }
        q.push(")");
    }
    // The cursor, unless the slice ends before it: below a skip or in a
    // later slice, it is implied, and as a row comparison the index scan
    // would start at it rather than at the slice's end (measured 15-20 ms
    // per partition of live keys' links in between).
    if let Some(c) = after
        && slice.hi.is_none_or(|hi| hi > c.at)
    {
        q.push(" AND (l.issued_at, l.id) < (")
            .push_bind(c.at)
            .push(", ")
            .push_bind(c.id)
            .push(")");
    }
    if let Some(hi) = slice.hi {
        q.push(" AND l.issued_at < ").push_bind(hi);
    }
    if let Some(ceiling) = ceiling {
        q.push(" AND l.expires_at <= ").push_bind(ceiling);
    }
    if let Some(lo) = slice.lo {
        q.push(" AND l.issued_at >= ")
            .push_bind(lo)
            .push(" AND l.expires_at > ")
            .push_bind(lo);
    }
}

/// A signer's page reads at most this many of its keys' walks in one slice
/// (each planned: ~9 partitions).
const MAX_KEY_PARTS: usize = 8;

/// At most this many days of expiry get a part of their own; the rest of a
/// slice's range is in its first part (no lower end) or its last (no upper).
const PART_DAYS: i64 = 10;

/// The starts of the links' partition periods (`partitions::Table::Links`:
/// UTC days) in the expiry range (lo, ceiling], oldest first, at most
/// PART_DAYS of them: the first ones after lo; with no lo, the last ones up
/// to the ceiling; with neither, from `now` two days back. Which days get a
/// part of their own only decides how well each part is planned, never
/// which links a slice holds: `parts` covers the whole range whatever the
/// days.
fn expiry_days(
    lo: Option<DateTime<Utc>>,
    ceiling: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let links = Table::Links;
    let period_after = |t: DateTime<Utc>| links.next(links.period_of(t));
    let mut day = match (lo, ceiling) {
        (Some(lo), _) => period_after(lo),
        (None, Some(c)) => period_after(c - TimeDelta::days(PART_DAYS)),
        (None, None) => period_after(now - TimeDelta::days(2)),
    };
    let mut days = Vec::new();
    while days.len() < PART_DAYS as usize && ceiling.is_none_or(|c| utc(day) <= c) {
        days.push(utc(day));
        day = links.next(day);
    }
    days
}

/// A half-open range of expiry [from, until); None: no end on that side.
type Part = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// The parts the days cut a range into: consecutive, together the whole range.
fn parts(days: &[DateTime<Utc>]) -> Vec<Part> {
    let mut bounds: Vec<Option<DateTime<Utc>>> = vec![None];
    bounds.extend(days.iter().copied().map(Some));
    bounds.push(None);
    bounds.windows(2).map(|w| (w[0], w[1])).collect()
}

#[cfg(test)]
mod tests {
    use super::{PART_DAYS, Slice, TICK, Window, expiry_days, parts, prefix_successor};
    use chrono::{DateTime, TimeDelta, Timelike, Utc};
    use proptest::prelude::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    /// A key is read in a slice [lo, hi) exactly when its window [from,
    /// until] shares an instant with it: a link at `until` = lo, or at
    /// `from` one tick below hi, is in the slice (a signer's page would lose
    /// it otherwise); an open end meets everything on that side.
    #[test]
    fn a_window_meets_a_slice_exactly_when_they_share_an_instant() {
        let (lo, hi) = (at(1_000), at(2_000));
        let slice = Slice {
            lo: Some(lo),
            hi: Some(hi),
        };
        let within = |from, until| Window::Within(from, until).meets(&slice);
        assert!(within(at(0), lo));
        assert!(!within(at(0), lo - TICK));
        assert!(within(hi - TICK, at(3_000)));
        assert!(!within(hi, at(3_000)));
        assert!(within(lo + TICK, hi - TICK));
        assert!(within(at(0), at(3_000)));
        assert!(Window::Unknown.meets(&slice));
        assert!(!Window::Empty.meets(&slice));
        let open = Slice { lo: None, hi: None };
        assert!(Window::Within(at(0), at(0)).meets(&open));
        assert!(!Window::Empty.meets(&open));
    }

    proptest! {
        /// The parts of any expiry range are consecutive and together the
        /// whole of it (a gap or an overlap would lose or repeat links); the
        /// days are midnights inside it, at most PART_DAYS of them.
        #[test]
        fn a_slices_parts_tile_its_expiry_range(
            lo in proptest::option::of(1_700_000_000i64..1_800_000_000),
            span in 0i64..40 * 86_400,
            ceiling_too in any::<bool>(),
            now in 1_700_000_000i64..1_800_000_000,
        ) {
            let lo = lo.map(at);
            let ceiling = ceiling_too.then(|| lo.map_or(at(now), |l| l) + TimeDelta::seconds(span));
            let days = expiry_days(lo, ceiling, at(now));
            prop_assert!(days.len() <= PART_DAYS as usize);
            for d in &days {
                prop_assert!(d.num_seconds_from_midnight() == 0 && d.nanosecond() == 0, "{d}");
                prop_assert!(lo.is_none_or(|lo| *d > lo) && ceiling.is_none_or(|c| *d <= c), "{d}");
            }
            prop_assert!(days.windows(2).all(|w| w[1] - w[0] == TimeDelta::days(1)));
            let parts = parts(&days);
            prop_assert_eq!(parts.len(), days.len() + 1);
            prop_assert_eq!(parts.first().unwrap().0, None);
            prop_assert_eq!(parts.last().unwrap().1, None);
            for w in parts.windows(2) {
                prop_assert!(w[0].1.is_some() && w[0].1 == w[1].0);
            }
        }
    }

    /// In the range `prefix_successor` bounds, compared as Postgres compares
    /// `COLLATE "C"` text: by bytes (`str`'s order).
    fn in_range(s: &str, prefix: &str) -> bool {
        s >= prefix && prefix_successor(prefix).is_none_or(|upper| s < upper.as_str())
    }

    #[test]
    fn the_successor_grows_the_last_char_that_can_grow() {
        let max = char::MAX;
        for (prefix, successor) in [
            ("a", Some("b".to_owned())),
            ("users/1/", Some("users/10".to_owned())),
            ("report_%", Some("report_&".to_owned())),
            ("日本", Some("日札".to_owned())),
            // One byte to two, two to three, three to four.
            ("x\u{7F}", Some("x\u{80}".to_owned())),
            ("x\u{7FF}", Some("x\u{800}".to_owned())),
            ("x\u{FFFF}", Some("x\u{10000}".to_owned())),
            // Past the surrogates, which no string holds.
            ("x\u{D7FF}", Some("x\u{E000}".to_owned())),
            (&format!("x{max}"), Some("y".to_owned())),
            (&format!("x{max}{max}"), Some("y".to_owned())),
            (&format!("x\u{10FFFE}{max}"), Some(format!("x{max}"))),
            (&format!("{max}"), None),
            (&format!("{max}{max}"), None),
            ("", None),
        ] {
            assert_eq!(prefix_successor(prefix), successor, "{prefix:?}");
        }
    }

    /// Chars at the edges that matter (encoding lengths, surrogates, the end
    /// of the range, LIKE's wildcards) as often as any other.
    fn char_() -> impl Strategy<Value = char> {
        prop_oneof![
            any::<char>(),
            prop::sample::select(vec![
                '\u{1}',
                '%',
                '_',
                'a',
                'b',
                '\u{7F}',
                '\u{80}',
                '\u{7FF}',
                '\u{800}',
                '\u{D7FF}',
                '\u{E000}',
                '\u{FFFF}',
                '\u{10000}',
                '\u{10FFFE}',
                char::MAX,
            ]),
        ]
    }

    fn string(max_chars: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(char_(), 0..=max_chars).prop_map(|cs| cs.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5_000, ..ProptestConfig::default() })]

        #[test]
        fn every_string_with_the_prefix_is_in_the_range(prefix in string(5), suffix in string(5)) {
            let s = format!("{prefix}{suffix}");
            prop_assert!(in_range(&s, &prefix), "{s:?} out of the range of {prefix:?}");
        }

        /// Strings near the prefix (a part of it, then anything): in the range
        /// exactly when they start with it.
        #[test]
        fn a_string_is_in_the_range_only_if_it_has_the_prefix(
            prefix in string(5),
            kept in 0usize..=5,
            rest in string(4),
        ) {
            let kept: String = prefix.chars().take(kept).collect();
            let s = format!("{kept}{rest}");
            prop_assert_eq!(s.starts_with(&prefix), in_range(&s, &prefix), "{:?} {:?}", s, prefix);
        }

        #[test]
        fn the_successor_is_the_least_string_above_the_range(prefix in string(5), other in string(8)) {
            if let Some(upper) = prefix_successor(&prefix) {
                prop_assert!(!upper.starts_with(&prefix));
                // Nothing between: a string below the successor and above
                // every string with the prefix would have to start with it.
                if other < upper && other >= prefix {
                    prop_assert!(other.starts_with(&prefix), "{other:?} {prefix:?} {upper:?}");
                }
            } else {
                prop_assert!(prefix.chars().all(|c| c == char::MAX));
            }
        }
    }
}
