//! `containeros provision ...`: the host side of first-boot provisioning.
//! Reads and writes `containeros/config.toml` on the boot partition of a
//! disk image (`.wic`) or a card, without mounting it (so without root),
//! checking the file exactly as the device will before writing it.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use containeros_provision::{BOOT_FILE, ProvisionError, TEMPLATE, image};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the provisioning file on the image's or card's boot partition.
    Show {
        /// A disk image (.wic), a card (/dev/sdX), or a FAT partition image.
        image: PathBuf,
    },
    /// Check a provisioning file as the device will: on an image or card,
    /// or a file on this computer (--file).
    Check {
        /// A disk image or card (omit with --file).
        #[arg(required_unless_present = "file")]
        image: Option<PathBuf>,
        /// A provisioning file on this computer.
        #[arg(long, value_name = "FILE", conflicts_with = "image")]
        file: Option<PathBuf>,
    },
    /// Write FILE ("-": standard input) as the provisioning file on the
    /// image's or card's boot partition; refused when it does not check out.
    Write { image: PathBuf, file: PathBuf },
    /// Put the commented template on the boot partition, unless there is a
    /// provisioning file already (--force replaces it).
    Init {
        image: PathBuf,
        #[arg(long)]
        force: bool,
    },
}

pub fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Show { image } => {
            let text = read(&image)?.ok_or_else(|| no_file(&image))?;
            print!("{text}");
            Ok(())
        }
        Command::Check { image, file } => {
            let (name, text) = match (image, file) {
                (_, Some(file)) => (file.clone(), read_local(&file)?),
                (Some(image), None) => (on_image(&image), read(&image)?.ok_or_else(|| no_file(&image))?),
                (None, None) => return Err("give an image or --file".into()),
            };
            check(&name, &text)?;
            println!("{}: OK", name.display());
            Ok(())
        }
        Command::Write { image, file } => {
            let text = read_local(&file)?;
            check(&file, &text)?;
            let partition = image::write(&image, &text).map_err(|e| cannot(&image, "write", &e))?;
            // Read back through the file system, as the device will.
            if read(&image)?.as_deref() != Some(text.as_str()) {
                return Err(format!(
                    "{}: the file read back differs from what was written; the medium may be failing",
                    on_image(&image).display()
                ));
            }
            println!("{} written ({})", on_image(&image).display(), describe(partition));
            Ok(())
        }
        Command::Init { image, force } => {
            if !force && read(&image)?.is_some() {
                return Err(format!(
                    "{} exists; use --force to replace it with the template",
                    on_image(&image).display()
                ));
            }
            let partition = image::write(&image, TEMPLATE).map_err(|e| cannot(&image, "write", &e))?;
            println!(
                "{} written from the template ({})",
                on_image(&image).display(),
                describe(partition)
            );
            Ok(())
        }
    }
}

fn check(name: &Path, text: &str) -> Result<(), String> {
    containeros_provision::parse(text).map(|_| ()).map_err(|located| {
        ProvisionError::Invalid {
            path: name.to_owned(),
            located: Box::new(located),
        }
        .to_string()
    })
}

fn read(image: &Path) -> Result<Option<String>, String> {
    image::read(image).map_err(|e| cannot(image, "read", &e))
}

fn read_local(file: &Path) -> Result<String, String> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        return Ok(text);
    }
    std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))
}

fn on_image(image: &Path) -> PathBuf {
    PathBuf::from(format!("{}:{BOOT_FILE}", image.display()))
}

fn no_file(image: &Path) -> String {
    format!(
        "{} has no {BOOT_FILE} on its boot partition; `containeros provision init` puts the template there",
        image.display()
    )
}

fn cannot(image: &Path, what: &str, e: &std::io::Error) -> String {
    let hint = match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            " (no permission: for a card, ask for write access to its device node)"
        }
        _ => "",
    };
    format!(
        "cannot {what} the boot partition of {}: {e}{hint}",
        image.display()
    )
}

fn describe(p: image::Partition) -> String {
    if p.number == 0 {
        "FAT file system".to_owned()
    } else {
        format!("partition {}, at byte {}", p.number, p.start)
    }
}
