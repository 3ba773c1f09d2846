//! `index.html`: the report's facts, tables and plots on one page that opens
//! from disk with no network: the style is inline, the plots are inline
//! `<svg>` elements, and nothing is loaded from anywhere.
//!
//! Every text that came from the records is escaped. The page is also
//! well-formed XML (void elements self-closed, only XML's five entities), so
//! that tools and tests can parse it whole.

use super::plots::Drawn;
use super::summary::Document;
use super::table::html_escape;

const STYLE: &str = "\
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #eee; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; }
figure svg { max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; color: #555; }
.scroll { overflow-x: auto; }";

/// The page.
pub fn page(doc: &Document, drawn: &Drawn) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n\
         <title>frugal sweep report</title>\n",
    );
    out.push_str(&format!("<style>\n{STYLE}\n</style>\n</head>\n<body>\n"));
    out.push_str("<h1>frugal sweep report</h1>\n<ul>\n");
    for f in &doc.facts {
        out.push_str(&format!(
            "<li><b>{}</b>: {}</li>\n",
            html_escape(f.label),
            html_escape(&f.value)
        ));
    }
    out.push_str("</ul>\n");
    out.push_str(&format!(
        "<p>{}</p>\n",
        html_escape(super::summary::FIGURES)
    ));
    if doc.models.is_empty() {
        out.push_str(&format!(
            "<p>{}</p>\n",
            html_escape(super::summary::NOTHING_YET)
        ));
    }
    for m in &doc.models {
        out.push_str(&format!("<h2>{}</h2>\n", html_escape(&m.model)));
        out.push_str("<h3>Best configurations</h3>\n");
        if m.best.rows.is_empty() {
            out.push_str("<p>No configuration of this model ran.</p>\n");
        } else {
            out.push_str(&format!(
                "<div class=\"scroll\">\n{}</div>\n",
                m.best.html()
            ));
        }
        out.push_str("<h3>All configurations</h3>\n");
        out.push_str(&format!(
            "<div class=\"scroll\">\n{}</div>\n",
            m.full.html()
        ));
        out.push_str("<h3>Plots</h3>\n");
        for entry in &m.plots {
            let Some(plot) = drawn.plots.iter().find(|p| p.file == entry.file) else {
                continue;
            };
            out.push_str(&format!(
                "<figure id=\"{}\">\n{}\n<figcaption>{} ({})</figcaption>\n</figure>\n",
                html_escape(&plot.file),
                inline_svg(&plot.svg),
                html_escape(&entry.note),
                html_escape(&plot.file)
            ));
        }
        if !m.not_drawn.is_empty() {
            out.push_str("<ul>\n");
            for why in &m.not_drawn {
                out.push_str(&format!("<li>not drawn: {}</li>\n", html_escape(why)));
            }
            out.push_str("</ul>\n");
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// An SVG document as an element inside HTML: without an XML declaration,
/// and without the namespace attribute, which HTML implies for `<svg>` (it is
/// a name, not a link, but the page is kept free of any URL).
fn inline_svg(svg: &str) -> String {
    let body = match svg.find("<svg") {
        Some(start) => &svg[start..],
        None => svg,
    };
    body.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_svg_drops_the_declaration_and_namespace() {
        let svg = "<?xml version=\"1.0\"?>\n<svg width=\"1\" xmlns=\"http://www.w3.org/2000/svg\"><text>a</text></svg>";
        assert_eq!(inline_svg(svg), "<svg width=\"1\"><text>a</text></svg>");
    }
}
