//! Slurm node lists: `node[01-04,07],gpu5` expanded into host names, the
//! first of which runs rank 0.

/// Expands a Slurm node list such as `node[01-04,07],gpu5` into host names.
///
/// # Errors
/// A description of the first malformed part.
pub fn parse_nodelist(list: &str) -> Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    let mut rest = list.trim();
    while !rest.is_empty() {
        // One item runs to the next comma outside brackets.
        let mut depth = 0usize;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or_else(|| format!("unbalanced ']' in '{list}'"))?
                }
                ',' if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        if depth != 0 {
            return Err(format!("unbalanced '[' in '{list}'"));
        }
        expand_item(&rest[..end], &mut hosts)?;
        rest = rest.get(end + 1..).unwrap_or("");
    }
    if hosts.is_empty() {
        return Err("the node list is empty".into());
    }
    Ok(hosts)
}

fn expand_item(item: &str, out: &mut Vec<String>) -> Result<(), String> {
    let Some(open) = item.find('[') else {
        if item.is_empty() {
            return Err("empty host name".into());
        }
        out.push(item.to_string());
        return Ok(());
    };
    let close = item
        .find(']')
        .ok_or_else(|| format!("missing ']' in '{item}'"))?;
    let prefix = &item[..open];
    let suffix = &item[close + 1..];
    if suffix.contains('[') {
        // Several bracket groups (a[1-2]b[3-4]): expand the first, recurse on the rest.
        let mut tails = Vec::new();
        expand_item(suffix, &mut tails)?;
        for n in expand_ranges(&item[open + 1..close])? {
            for t in &tails {
                out.push(format!("{prefix}{n}{t}"));
            }
        }
        return Ok(());
    }
    for n in expand_ranges(&item[open + 1..close])? {
        out.push(format!("{prefix}{n}{suffix}"));
    }
    Ok(())
}

/// `01-04,07` → `01 02 03 04 07`, keeping the zero padding of the lower bound.
fn expand_ranges(body: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in body.split(',') {
        let part = part.trim();
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let width = lo.len();
        let a: u64 = lo
            .parse()
            .map_err(|_| format!("'{part}' is not a number or range"))?;
        let b: u64 = hi
            .parse()
            .map_err(|_| format!("'{part}' is not a number or range"))?;
        if b < a || b - a > 100_000 {
            return Err(format!("range '{part}' is backwards or too long"));
        }
        for n in a..=b {
            out.push(format!("{n:0width$}"));
        }
    }
    Ok(out)
}

/// The first host of a Slurm node list: where rank 0 runs.
pub fn first_host(list: &str) -> Result<String, String> {
    parse_nodelist(list)?
        .into_iter()
        .next()
        .ok_or_else(|| "the node list is empty".into())
}
