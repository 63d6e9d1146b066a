//! The daemon's command line: four flags do not need a parser crate.

use std::ffi::OsString;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage: containeros-agent [--config FILE] [--check-config]

  --config FILE    configuration file (default: $CONTAINEROS_CONFIG, else
                   /etc/containeros/agent.toml)
  --check-config   load and validate the configuration, then exit
  --version        print the version
  --help           print this help";

#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub config: PathBuf,
    pub check_config: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Run(Args),
    /// Print this and exit successfully (--help, --version).
    Exit(String),
}

pub fn parse(mut args: impl Iterator<Item = OsString>) -> Result<Parsed, String> {
    let mut config = std::env::var_os(containeros_config::PATH_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(containeros_config::DEFAULT_PATH));
    let mut check_config = false;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--config") => {
                config = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or("--config needs a file path")?;
            }
            Some(s) if s.starts_with("--config=") => config = PathBuf::from(&s["--config=".len()..]),
            Some("--check-config") => check_config = true,
            Some("--version" | "-V") => {
                return Ok(Parsed::Exit(format!(
                    "containeros-agent {}",
                    env!("CARGO_PKG_VERSION")
                )));
            }
            Some("--help" | "-h") => return Ok(Parsed::Exit(USAGE.to_owned())),
            _ => return Err(format!("unknown argument {:?}", arg)),
        }
    }
    Ok(Parsed::Run(Args { config, check_config }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn p(args: &[&str]) -> Result<Parsed, String> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn flags() {
        assert_eq!(
            p(&["--config", "/x.toml", "--check-config"]),
            Ok(Parsed::Run(Args {
                config: "/x.toml".into(),
                check_config: true
            }))
        );
        assert!(
            matches!(p(&["--config=/y"]), Ok(Parsed::Run(Args { config, .. })) if config == Path::new("/y"))
        );
        assert!(matches!(p(&["--version"]), Ok(Parsed::Exit(v)) if v.starts_with("containeros-agent ")));
        assert!(p(&["--config"]).is_err());
        assert!(p(&["--frobnicate"]).is_err());
    }
}
