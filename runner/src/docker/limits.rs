//! CPU and memory limits as the pipeline writes them, turned into what the engine takes.

/// A `resources:` value the engine cannot take; the message names the value and the forms
/// that are accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("invalid cpu limit `{0}`: expected a positive number of CPUs, e.g. 0.5, 2 or 500m")]
    Cpu(String),
    #[error(
        "invalid memory limit `{0}`: expected bytes or a number with a Ki, Mi, Gi, Ti, K, M, G \
         or T suffix, e.g. 512Mi or 1G"
    )]
    Memory(String),
    #[error("invalid memory limit `{0}`: must be more than 0 bytes")]
    NoMemory(String),
}

/// `cpu` (e.g. `0.5`, `2`, or Kubernetes millicores `500m`) → nano CPUs (`HostConfig.NanoCpus`).
pub fn parse_cpu(value: &str) -> Result<i64, LimitError> {
    let bad = || LimitError::Cpu(value.to_string());
    let s = value.trim();
    let cpus = match s.strip_suffix('m') {
        Some(millis) => millis.parse::<f64>().map(|m| m / 1000.0),
        None => s.parse::<f64>(),
    }
    .map_err(|_| bad())?;
    if !cpus.is_finite() || cpus <= 0.0 {
        return Err(bad());
    }
    let nanos = (cpus * 1e9).round();
    if nanos < 1.0 || nanos > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(nanos as i64)
}

/// `memory` → bytes (`HostConfig.Memory`). Accepts plain bytes and a number (decimals allowed)
/// with a binary (`Ki`, `Mi`, `Gi`, `Ti`) or decimal (`K`/`k`, `M`, `G`, `T`) suffix.
pub fn parse_memory(value: &str) -> Result<i64, LimitError> {
    let bad = || LimitError::Memory(value.to_string());
    let s = value.trim();
    let number_len = s
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, suffix) = s.split_at(number_len);
    let multiplier: u128 = match suffix {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(bad()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || fraction.len() > 9 {
        return Err(bad());
    }
    if !number.contains('.') && whole.len() > 20 {
        return Err(bad());
    }
    let scale = 10u128.pow(fraction.len() as u32);
    let digits: u128 = format!("{whole}{fraction}").parse().map_err(|_| bad())?;
    let bytes = digits
        .checked_mul(multiplier)
        .map(|b| b / scale)
        .ok_or_else(bad)?;
    if bytes == 0 {
        return Err(LimitError::NoMemory(value.to_string()));
    }
    i64::try_from(bytes).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_limits() {
        assert_eq!(parse_cpu("0.5"), Ok(500_000_000));
        assert_eq!(parse_cpu("2"), Ok(2_000_000_000));
        assert_eq!(parse_cpu("1.25"), Ok(1_250_000_000));
        assert_eq!(parse_cpu("250m"), Ok(250_000_000));
        for bad in ["", "0", "-1", "abc", "1x", "inf", "NaN", "0m"] {
            let err = parse_cpu(bad).unwrap_err().to_string();
            assert!(err.contains("invalid cpu limit"), "{bad}: {err}");
        }
    }

    #[test]
    fn limit_messages() {
        assert_eq!(
            parse_cpu("lots").unwrap_err().to_string(),
            "invalid cpu limit `lots`: expected a positive number of CPUs, e.g. 0.5, 2 or 500m"
        );
        assert_eq!(
            parse_memory("12XB").unwrap_err().to_string(),
            "invalid memory limit `12XB`: expected bytes or a number with a Ki, Mi, Gi, Ti, K, M, \
             G or T suffix, e.g. 512Mi or 1G"
        );
        assert_eq!(
            parse_memory("0Mi").unwrap_err().to_string(),
            "invalid memory limit `0Mi`: must be more than 0 bytes"
        );
    }

    #[test]
    fn memory_limits() {
        assert_eq!(parse_memory("512Mi"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_memory("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("64Ki"), Ok(64 * 1024));
        assert_eq!(parse_memory("2K"), Ok(2000));
        assert_eq!(parse_memory("2k"), Ok(2000));
        assert_eq!(parse_memory("300M"), Ok(300_000_000));
        assert_eq!(parse_memory("1048576"), Ok(1_048_576));
        assert_eq!(parse_memory("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_memory("1Ti"), Ok(1 << 40));
        for bad in [
            "",
            "Mi",
            "12XB",
            "1.2.3G",
            "-5M",
            "0",
            "0Mi",
            "1 Gi",
            "99999999999999999999Ti",
        ] {
            let err = parse_memory(bad).unwrap_err().to_string();
            assert!(err.contains("invalid memory limit"), "{bad}: {err}");
        }
    }
}
