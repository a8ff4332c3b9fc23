"""The error page template language (kproxy.core.templates): parse and render tables."""

from __future__ import annotations

import pytest

from kproxy.core.templates import If, Message, Template, Text, parse, render

IF_ELSE = "{{ if .Message }}<p>{{ .Message }}</p>{{ else }}<p>Back soon.</p>{{ end }}"


@pytest.mark.parametrize(
    ("template", "message", "expected"),
    [
        # text only, and the empty template
        ("", "m", ""),
        ("<p>static</p>", "ignored", "<p>static</p>"),
        ("a } b { c }} d", "", "a } b { c }} d"),  # lone braces are text
        # {{ .Message }}, with or without whitespace inside the braces
        ("<p>{{ .Message }}</p>", "hi", "<p>hi</p>"),
        ("<p>{{.Message}}</p>", "hi", "<p>hi</p>"),
        ("<p>{{   .Message\t}}</p>", "hi", "<p>hi</p>"),
        ("<p>{{\n.Message\n}}</p>", "hi", "<p>hi</p>"),
        ("<p>{{ .Message }}</p>", "", "<p></p>"),
        ("{{ .Message }}{{ .Message }}", "ab", "abab"),
        # if / else / end
        (IF_ELSE, "Upgrading", "<p>Upgrading</p>"),
        (IF_ELSE, "", "<p>Back soon.</p>"),
        ("a{{ if .Message }}[{{ .Message }}]{{ end }}b", "", "ab"),
        ("a{{ if .Message }}[{{ .Message }}]{{ end }}b", "m", "a[m]b"),
        ("{{if .Message}}yes{{else}}no{{end}}", "x", "yes"),
        ("{{if .Message}}yes{{else}}no{{end}}", "", "no"),
        ("{{ if   .Message }}yes{{ end }}", "x", "yes"),
        ("{{ if .Message }}{{ else }}empty{{ end }}", "x", ""),
        # nested blocks and text around them
        (
            "<main>{{ if .Message }}<div>{{ if .Message }}<b>{{ .Message }}</b>{{ end }}</div>"
            "{{ else }}<i>none</i>{{ end }}</main>",
            "m",
            "<main><div><b>m</b></div></main>",
        ),
        (
            "<main>{{ if .Message }}<div>{{ if .Message }}<b>{{ .Message }}</b>{{ end }}</div>"
            "{{ else }}<i>none</i>{{ end }}</main>",
            "",
            "<main><i>none</i></main>",
        ),
        ("l1\n{{ if .Message }}\n  {{ .Message }}\n{{ end }}\nl5", "m", "l1\n\n  m\n\nl5"),
        # escaping: the message is HTML-escaped, quotes included, and never expanded
        (
            "<p>{{ .Message }}</p>",
            "<script>alert(\"x\")</script> & 'q'",
            "<p>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27;</p>",
        ),
        ('<a title="{{ .Message }}">', '" onclick="x', '<a title="&quot; onclick=&quot;x">'),
        ("<p>{{ .Message }}</p>", "{{ .Message }} {{ end }}", "<p>{{ .Message }} {{ end }}</p>"),
        ("<p>{{ .Message }}</p>", "&amp;", "<p>&amp;amp;</p>"),
        ("<p>{{ .Message }}</p>", "café ✓", "<p>café ✓</p>"),
        # the template itself is trusted: its text is not escaped
        ("<b>&amp; {{ .Message }}</b>", "<", "<b>&amp; &lt;</b>"),
        # trim markers: "{{- " eats the whitespace before, " -}}" the whitespace after
        ("a  \n\t{{- .Message }}  b", "m", "am  b"),
        ("a  {{ .Message -}} \r\n\t b", "m", "a  mb"),
        ("a \n {{- .Message -}} \n b", "m", "amb"),
        (
            "<ul>\n  {{- if .Message }}\n  <li>{{ .Message }}</li>\n  {{- end }}\n</ul>",
            "m",
            "<ul>\n  <li>m</li>\n</ul>",
        ),
        (
            "<p>\n  {{- if .Message -}}\n  yes\n  {{- else -}}\n  no\n  {{- end -}}\n</p>",
            "",
            "<p>no</p>",
        ),
        (
            "<p>\n  {{- if .Message -}}\n  yes\n  {{- else -}}\n  no\n  {{- end -}}\n</p>",
            "x",
            "<p>yes</p>",
        ),
        ("{{- .Message -}}", "m", "m"),  # nothing to trim at the edges
        ("x {{- if .Message }} y {{ end -}} z", "", "xz"),
        ("{{ .Message -}}{{ .Message }}", "m", "mm"),  # trimming up to the next action
    ],
)
def test_render(template: str, message: str, expected: str) -> None:
    assert render(parse(template), message) == expected


@pytest.mark.parametrize(
    ("template", "nodes"),
    [
        ("", ()),
        ("abc", (Text("abc"),)),
        ("a{{ .Message }}b", (Text("a"), Message(), Text("b"))),
        ("{{ if .Message }}x{{ end }}", (If((Text("x"),)),)),
        ("{{ if .Message }}x{{ else }}y{{ end }}", (If((Text("x"),), (Text("y"),)),)),
        (
            "{{ if .Message }}{{ if .Message }}{{ .Message }}{{ end }}{{ else }}n{{ end }}",
            (If((If((Message(),)),), (Text("n"),)),),
        ),
        ("  {{- .Message -}}  ", (Message(),)),  # whitespace trimmed away leaves no text
    ],
)
def test_parse_tree(template: str, nodes: tuple[object, ...]) -> None:
    assert parse(template) == Template(nodes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("template", "error"),
    [
        # unclosed actions
        ("abc {{ .Message", "line 1, column 5: unclosed action; expected '}}' to end it"),
        ("a\nbc\n  {{ if .Message }", "line 3, column 3: unclosed action; expected '}}'"),
        # actions outside the subset are named
        (
            "{{ .Status }}",
            "line 1, column 1: unsupported action {{ .Status }}; expected "
            "{{ .Message }}, {{ if .Message }}, {{ else }} and {{ end }}",
        ),
        ("x\n  y {{ .StatusText }}", "line 2, column 5: unsupported action {{ .StatusText }}"),
        ("{{ .message }}", "unsupported action {{ .message }}"),  # field names are case-sensitive
        ("{{ Message }}", "unsupported action {{ Message }}"),
        ("{{ .Message | html }}", "unsupported action {{ .Message | html }}"),
        ("{{ if .Status }}x{{ end }}", "unsupported action {{ if .Status }}"),
        ("{{ if not .Message }}x{{ end }}", "unsupported action {{ if not .Message }}"),
        ("{{ if }}x{{ end }}", "unsupported action {{ if }}"),
        (
            "{{ if .Message }}a{{ else if .Message }}b{{ end }}",
            "line 1, column 19: unsupported action {{ else if .Message }}",
        ),
        ("{{ with .Message }}{{ . }}{{ end }}", "unsupported action {{ with .Message }}"),
        ('{{ template "x" }}', 'unsupported action {{ template "x" }}'),
        ("{{/* a comment */}}", "unsupported action {{ /* a comment */ }}"),
        ("{{ }}", "line 1, column 1: empty action {{ }}; expected {{ .Message }}"),
        ("{{}}", "empty action {{}}"),
        ("{{- -}}", "empty action"),
        # a trim marker needs whitespace beside its dash, as in Go
        ("{{-.Message}}", "unsupported action {{ -.Message }} (a trim marker needs whitespace"),
        ("{{.Message-}}", "unsupported action {{ .Message- }} (a trim marker needs whitespace"),
        # block structure
        ("a {{ else }}", "line 1, column 3: {{ else }} without an {{ if .Message }} before it"),
        ("{{ end }}", "line 1, column 1: {{ end }} without an {{ if .Message }} before it"),
        ("{{ if .Message }}{{ end }}{{ end }}", "line 1, column 27: {{ end }} without an"),
        (
            "{{ if .Message }}a\n{{ else }}b\n {{ else }}c{{ end }}",
            "line 3, column 2: a second {{ else }} for the {{ if }} at line 1, column 1; "
            "expected {{ end }}",
        ),
        (
            "<p>\n  {{ if .Message }}\n",
            "line 2, column 3: {{ if .Message }} is never closed; "
            "expected {{ end }} before the end of the file",
        ),
        (
            "{{ if .Message }}\n{{ if .Message }}{{ end }}",
            "line 1, column 1: {{ if .Message }} is never closed",
        ),
        ("{{ if .Message }}\n  {{ if .Message }}", "line 2, column 3: {{ if .Message }} is never"),
        # columns count characters, not bytes
        ("é€ {{ .Nope }}", "line 1, column 4: unsupported action {{ .Nope }}"),
    ],
)
def test_parse_errors(template: str, error: str) -> None:
    with pytest.raises(ValueError, match=r"^line \d+, column \d+: ") as info:
        parse(template)
    assert error in str(info.value)


def test_uses_message() -> None:
    assert not parse("<p>static</p>").uses_message
    assert parse("a{{ .Message }}").uses_message
    assert parse("{{ if .Message }}x{{ end }}").uses_message
