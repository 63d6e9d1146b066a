//! `containeros status`: the agent's properties, for people or as JSON.

use containeros_api::{AgentProxy, ClientError, Status};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object (stable field names) instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(agent: &AgentProxy<'_>, args: Args) -> Result<(), ClientError> {
    let status = containeros_api::status(agent).await?;
    if args.json {
        let json = serde_json::to_string_pretty(&status).map_err(|e| ClientError::Refused(e.to_string()))?;
        println!("{json}");
    } else {
        print!("{}", human(&status));
    }
    Ok(())
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn human(s: &Status) -> String {
    let engine = match (s.engine_version.as_str(), s.engine_restarts) {
        ("", 0) => s.engine_state.clone(),
        ("", n) => format!("{} (restarted {n}x by the agent)", s.engine_state),
        (v, 0) => format!("{}, {v}", s.engine_state),
        (v, n) => format!("{}, {v} (restarted {n}x by the agent)", s.engine_state),
    };
    let operation = if s.operation == "idle" || s.operation.is_empty() {
        or_dash(&s.operation).to_owned()
    } else {
        format!("{} ({}%)", s.operation, s.progress)
    };
    format!(
        "Device id:    {}\nAgent:        {}\nOS version:   {}\nBooted slot:  {}\nOperation:    {}\nEngine:       {}\nProvisioning: {}\nLast error:   {}\n",
        or_dash(&s.device_id),
        s.agent_version,
        or_dash(&s.os_version),
        or_dash(&s.booted_slot),
        operation,
        engine,
        or_dash(&s.provisioning),
        or_dash(&s.last_error),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_output() {
        let s = Status {
            agent_version: "0.1.0".into(),
            os_version: "1.2".into(),
            booted_slot: "B".into(),
            operation: "idle".into(),
            engine_state: "up".into(),
            engine_version: "Engine 20.10.24 (API 1.41)".into(),
            engine_restarts: 1,
            device_id: "6f1c2b0e-3d4a-4f5b-8c6d-7e8f9a0b1c2d".into(),
            provisioning: "in force: /boot/firmware/containeros/config.toml (sha256 0123456789ab) of 2026-11-22T12:00:00Z".into(),
            ..Status::default()
        };
        assert_eq!(
            human(&s),
            "Device id:    6f1c2b0e-3d4a-4f5b-8c6d-7e8f9a0b1c2d\nAgent:        0.1.0\nOS version:   1.2\nBooted slot:  B\nOperation:    idle\n\
             Engine:       up, Engine 20.10.24 (API 1.41) (restarted 1x by the agent)\n\
             Provisioning: in force: /boot/firmware/containeros/config.toml (sha256 0123456789ab) of 2026-11-22T12:00:00Z\n\
             Last error:   -\n"
        );
    }
}
