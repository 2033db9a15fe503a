//! `drover admin-token create|list|revoke`: the named tokens whose names the history
//! records as who changed what.

use std::io::Write;

use drover_protocol::Timestamp;
use drover_protocol::api::{AdminTokenCreated, AdminTokenInfo, AdminTokenRequest, AdminTokenState};
use reqwest::Method;

use super::{Table, ago, emit, path_segment, print_json, reason_query};
use crate::cli::args::{AdminTokenCreateArgs, AdminTokenNameArgs, Output, OutputArgs};
use crate::cli::client::{ADDR_ENV, AdminClient, CA_ENV, TOKEN_ENV};
use crate::error::Error;

const PATH: &str = "/v1/admin/admin-tokens";

/// `drover admin-token create`: the secret alone on stdout (so `$(drover admin-token
/// create ci)` is the token), how to use it on stderr.
pub async fn admin_token_create(
    client: &AdminClient,
    args: &AdminTokenCreateArgs,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let request = AdminTokenRequest {
        name: args.name.clone(),
        ttl: args.ttl,
    };
    let path = format!("{PATH}{}", reason_query(&args.reason));
    let created: AdminTokenCreated = client.send_json(Method::POST, &path, &request).await?;
    match args.output {
        Output::Json => print_json(out, &created),
        Output::Table => {
            emit(out, &format!("{}\n", created.token))?;
            let expiry = created
                .expires_at
                .map_or_else(|| "is valid until revoked".to_owned(), |at| format!("expires at {at}"));
            eprintln!(
                "Admin token {} {expiry}; this is the only time its secret is shown. Use it as {TOKEN_ENV}, with {ADDR_ENV}={} and {CA_ENV} naming a copy of the coordinator's ca.pem.",
                created.name,
                client.address()
            );
            Ok(())
        }
    }
}

/// `drover admin-token list`.
pub async fn admin_token_list(
    client: &AdminClient,
    args: &OutputArgs,
    now: Timestamp,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let tokens: Vec<AdminTokenInfo> = client.get(PATH).await?;
    match args.output {
        Output::Json => print_json(out, &tokens),
        Output::Table => emit(out, &tokens_table(&tokens, now)),
    }
}

/// `drover admin-token revoke`.
pub async fn admin_token_revoke(
    client: &AdminClient,
    args: &AdminTokenNameArgs,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let path = format!(
        "{PATH}/{}{}",
        path_segment(args.name.as_str()),
        reason_query(&args.reason)
    );
    let revoked: AdminTokenInfo = client.send_json(Method::DELETE, &path, &()).await?;
    emit(
        out,
        &format!(
            "revoked admin token {}: requests with it are refused from now on\n",
            revoked.name
        ),
    )
}

/// One row per token: NAME STATE CREATED BY EXPIRES LAST USED.
fn tokens_table(tokens: &[AdminTokenInfo], now: Timestamp) -> String {
    let mut table = Table::new(&["NAME", "STATE", "CREATED", "BY", "EXPIRES", "LAST USED"]);
    for token in tokens {
        let state = match token.state {
            AdminTokenState::Active => "active".to_owned(),
            AdminTokenState::Expired => "expired".to_owned(),
            AdminTokenState::Revoked => format!(
                "revoked {} by {}",
                ago(token.revoked_at, now),
                token.revoked_by.as_deref().unwrap_or("-")
            ),
        };
        table.row(vec![
            token.name.to_string(),
            state,
            token.created_at.to_string(),
            token.created_by.clone(),
            token.expires_at.map_or_else(|| "never".to_owned(), |at| at.to_string()),
            ago(token.last_used_at, now),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_table_shows_state_expiry_and_use() {
        let at = |seconds: i64| Timestamp::from_unix(1_800_000_000 + seconds);
        let token = |name: &str, state, expires_at, revoked: Option<(i64, &str)>| AdminTokenInfo {
            name: name.parse().expect("name"),
            state,
            created_at: at(0),
            created_by: "admin".into(),
            expires_at,
            last_used_at: Some(at(3600)),
            revoked_at: revoked.map(|(seconds, _)| at(seconds)),
            revoked_by: revoked.map(|(_, by)| by.to_owned()),
        };
        let text = tokens_table(
            &[
                token("admin", AdminTokenState::Active, None, None),
                token("ci", AdminTokenState::Expired, Some(at(60)), None),
                token("alice", AdminTokenState::Revoked, None, Some((7000, "admin"))),
            ],
            at(7200),
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME   STATE"), "{text}");
        assert!(lines[1].contains("active") && lines[1].contains("never") && lines[1].ends_with("1h ago"));
        assert!(
            lines[2].contains("expired") && lines[2].contains("2027-01-15T08:01:00Z"),
            "{text}"
        );
        assert!(lines[3].contains("revoked 3m ago by admin"), "{text}");
    }
}
