//! One integration-test binary: real presignd servers on port 0, each against a
//! fresh database (#[sqlx::test]) and the dev stack's Garage.
//! Needs `deploy/dev/stack.sh` to have run and its env sourced; a missing service
//! fails the tests loudly.

mod api_contract;
mod audit;
mod authz;
mod aws_backend;
mod bucket_regions;
mod client_examples;
mod crash_safety;
mod credentials;
mod dashboards;
mod deploy_files;
mod error_details;
mod fixture;
mod health;
mod helpers;
mod incident;
mod issue_link;
mod key_budget;
mod layering;
mod lifecycle;
mod link_paging;
mod link_rollup;
mod link_summaries;
mod lookup_link;
mod metrics;
mod migrations;
mod mtls;
mod observability;
mod paging;
mod pki;
mod policy_reload;
mod postgres_tls;
mod preflight;
mod presign_equivalence;
mod presignctl;
mod presignctl_links;
mod production;
mod prop_issue;
mod rate_limit;
mod read_isolation;
mod registry_down;
mod registry_errors;
mod repair;
mod replica;
mod reseal;
mod retries;
mod revocation;
mod secrets;
mod signers;
mod tls_handshake;
mod upload_form;
mod validation;
mod verify_link;
