//! Catalog (HTTP/JSON): the titles, where each is licensed and which plans may play it.
//!
//! - `GET /titles?prefix=nar&kind=anime&country=JP` lists titles (name prefix, case-insensitive)
//! - `GET /titles/{id}` one title (404 `unknown_title`)
//! - `GET /titles/{id}/playability?country=JP&plan=basic` whether that caller may play it, and
//!   why not (`not_licensed_in_country`, `plan_not_allowed`, `not_playable`)
//!
//! The data comes from a JSON file (`config/catalog.json`), checked at load.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// The subscription plans, cheapest first.
pub const PLANS: [&str; 3] = ["basic", "standard", "premium"];

/// What a title is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Animated series or film.
    Anime,
    /// Comics: in the catalog, but read rather than played.
    Manga,
    /// Live-action series.
    Series,
}

/// One title.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Title {
    /// Stable id, e.g. `t-0001`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Anime, manga or series.
    pub kind: Kind,
    /// Episodes (chapters for manga).
    pub episodes: u32,
    /// First release year.
    pub year: u16,
    /// Countries (ISO 3166-1 alpha-2) where it is licensed.
    pub countries: Vec<String>,
    /// Plans that may play it.
    pub plans: Vec<String>,
}

/// Whether a caller may play a title.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Playability {
    /// The title.
    pub title: Title,
    /// May play.
    pub allowed: bool,
    /// Why not, when not allowed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

/// The loaded catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    titles: BTreeMap<String, Title>,
}

impl Catalog {
    /// Loads and checks a catalog file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read catalog {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks a catalog document (`{"titles": [...]}`).
    pub fn parse(text: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Doc {
            titles: Vec<Title>,
        }
        let doc: Doc = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut titles = BTreeMap::new();
        for t in doc.titles {
            if t.id.is_empty() || t.name.is_empty() {
                return Err(format!("title {:?} needs an id and a name", t.id));
            }
            if let Some(c) = t
                .countries
                .iter()
                .find(|c| c.len() != 2 || !c.chars().all(|ch| ch.is_ascii_uppercase()))
            {
                return Err(format!(
                    "title {}: country {c:?} is not an ISO 3166-1 alpha-2 code like \"JP\"",
                    t.id
                ));
            }
            if let Some(p) = t.plans.iter().find(|p| !PLANS.contains(&p.as_str())) {
                return Err(format!(
                    "title {}: plan {p:?} is not one of {}",
                    t.id,
                    PLANS.join(", ")
                ));
            }
            let id = t.id.clone();
            if titles.insert(id.clone(), t).is_some() {
                return Err(format!("title id {id} appears twice"));
            }
        }
        Ok(Self { titles })
    }

    /// How many titles.
    pub fn len(&self) -> usize {
        self.titles.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.titles.is_empty()
    }

    /// One title.
    pub fn get(&self, id: &str) -> Option<&Title> {
        self.titles.get(id)
    }

    /// Titles whose name starts with `prefix` (case-insensitive), optionally of one kind and
    /// licensed in one country, by name.
    pub fn search(&self, prefix: &str, kind: Option<Kind>, country: Option<&str>) -> Vec<&Title> {
        let prefix = prefix.to_lowercase();
        let mut found: Vec<&Title> = self
            .titles
            .values()
            .filter(|t| t.name.to_lowercase().starts_with(&prefix))
            .filter(|t| kind.is_none_or(|k| t.kind == k))
            .filter(|t| country.is_none_or(|c| t.countries.iter().any(|x| x == c)))
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        found
    }

    /// Whether a caller in `country` on `plan` may play `id` (`None`: unknown title).
    pub fn playability(&self, id: &str, country: &str, plan: &str) -> Option<Playability> {
        let title = self.titles.get(id)?;
        let reason = if title.kind == Kind::Manga {
            Some("not_playable")
        } else if !title.countries.iter().any(|c| c == country) {
            Some("not_licensed_in_country")
        } else if !title.plans.iter().any(|p| p == plan) {
            Some("plan_not_allowed")
        } else {
            None
        };
        Some(Playability {
            title: title.clone(),
            allowed: reason.is_none(),
            reason: reason.map(str::to_owned),
        })
    }

    /// Countries any title is licensed in.
    pub fn countries(&self) -> BTreeSet<&str> {
        self.titles
            .values()
            .flat_map(|t| t.countries.iter().map(String::as_str))
            .collect()
    }
}

use crate::service::{error, ApiError};

#[derive(Debug, Deserialize)]
struct SearchQuery {
    #[serde(default)]
    prefix: String,
    kind: Option<String>,
    country: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PlayQuery {
    country: Option<String>,
    plan: Option<String>,
}

/// The Catalog API (without `/health` and faults; see [`crate::service::with_basics`]).
pub fn router(catalog: Arc<Catalog>) -> Router {
    Router::new()
        .route("/titles", get(list))
        .route("/titles/{id}", get(one))
        .route("/titles/{id}/playability", get(playability))
        .with_state(catalog)
}

async fn list(
    State(c): State<Arc<Catalog>>,
    Query(q): Query<SearchQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let kind = match q.kind.as_deref() {
        None | Some("") => None,
        Some(k) => Some(
            serde_json::from_value::<Kind>(serde_json::Value::String(k.to_owned())).map_err(
                |_| {
                    error(
                        StatusCode::BAD_REQUEST,
                        "bad_kind",
                        format!("kind {k:?} is not one of anime, manga, series"),
                    )
                },
            )?,
        ),
    };
    let titles = c.search(
        &q.prefix,
        kind,
        q.country.as_deref().filter(|s| !s.is_empty()),
    );
    Ok(Json(
        serde_json::json!({"count": titles.len(), "titles": titles}),
    ))
}

async fn one(
    State(c): State<Arc<Catalog>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Title>, ApiError> {
    c.get(&id).cloned().map(Json).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "unknown_title",
            format!("no title {id}"),
        )
    })
}

async fn playability(
    State(c): State<Arc<Catalog>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<PlayQuery>,
) -> Result<Json<Playability>, ApiError> {
    let (Some(country), Some(plan)) = (q.country, q.plan) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "missing_caller",
            "give country and plan, e.g. ?country=JP&plan=basic",
        ));
    };
    c.playability(&id, &country, &plan)
        .map(Json)
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                "unknown_title",
                format!("no title {id}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/catalog.json"))
            .expect("the shipped catalog loads")
    }

    #[test]
    fn the_shipped_catalog_has_a_few_dozen_titles_of_every_kind() {
        let c = catalog();
        assert!(c.len() >= 30, "{}", c.len());
        for kind in [Kind::Anime, Kind::Manga, Kind::Series] {
            assert!(c.titles.values().any(|t| t.kind == kind), "{kind:?}");
        }
        assert!(c.countries().len() >= 4);
    }

    #[test]
    fn search_is_by_case_insensitive_name_prefix_kind_and_country() {
        let c = catalog();
        let all = c.search("", None, None);
        assert_eq!(all.len(), c.len());
        let first = all[0].name.clone();
        let prefix: String = first.chars().take(3).collect();
        let found = c.search(&prefix.to_uppercase(), None, None);
        assert!(found.iter().any(|t| t.name == first));
        assert!(found
            .iter()
            .all(|t| t.name.to_lowercase().starts_with(&prefix.to_lowercase())));
        assert!(c
            .search("", Some(Kind::Manga), None)
            .iter()
            .all(|t| t.kind == Kind::Manga));
        assert!(c
            .search("", None, Some("JP"))
            .iter()
            .all(|t| t.countries.iter().any(|x| x == "JP")));
    }

    #[test]
    fn playability_says_why_not() {
        let c = Catalog::parse(
            r#"{"titles": [
              {"id": "a", "name": "A", "kind": "anime", "episodes": 12, "year": 2020, "countries": ["JP"], "plans": ["premium"]},
              {"id": "m", "name": "M", "kind": "manga", "episodes": 90, "year": 2001, "countries": ["JP"], "plans": ["basic", "premium"]}
            ]}"#,
        )
        .expect("valid");
        let ok = c.playability("a", "JP", "premium").expect("known");
        assert!(ok.allowed && ok.reason.is_none());
        let where_ = c.playability("a", "US", "premium").expect("known");
        assert_eq!(where_.reason.as_deref(), Some("not_licensed_in_country"));
        let plan = c.playability("a", "JP", "basic").expect("known");
        assert_eq!(plan.reason.as_deref(), Some("plan_not_allowed"));
        let manga = c.playability("m", "JP", "basic").expect("known");
        assert_eq!(manga.reason.as_deref(), Some("not_playable"));
        assert!(c.playability("zzz", "JP", "basic").is_none());
    }

    #[test]
    fn bad_catalogs_are_rejected_with_the_reason() {
        let dup = r#"{"titles": [
          {"id": "a", "name": "A", "kind": "anime", "episodes": 1, "year": 2020, "countries": ["JP"], "plans": ["basic"]},
          {"id": "a", "name": "B", "kind": "anime", "episodes": 1, "year": 2020, "countries": ["JP"], "plans": ["basic"]}
        ]}"#;
        assert!(Catalog::parse(dup)
            .expect_err("dup")
            .contains("appears twice"));
        let country = r#"{"titles": [{"id": "a", "name": "A", "kind": "anime", "episodes": 1, "year": 2020, "countries": ["japan"], "plans": ["basic"]}]}"#;
        assert!(Catalog::parse(country)
            .expect_err("country")
            .contains("alpha-2"));
        let plan = r#"{"titles": [{"id": "a", "name": "A", "kind": "anime", "episodes": 1, "year": 2020, "countries": ["JP"], "plans": ["gold"]}]}"#;
        assert!(Catalog::parse(plan)
            .expect_err("plan")
            .contains("not one of basic"));
        let kind = r#"{"titles": [{"id": "a", "name": "A", "kind": "film", "episodes": 1, "year": 2020, "countries": ["JP"], "plans": ["basic"]}]}"#;
        assert!(Catalog::parse(kind).is_err());
    }
}
