"""Go's text/template as shoal evaluates it: the language docker's --format uses, its printing of Go values,
docker's functions, and Go's error messages."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.cli.gotemplate import HEADER_FUNCTIONS, GoValue, Template, TemplateError, go_float, go_sprint

DATA: dict[str, Any] = {
    "Name": "web",
    "Image": "nginx:1.25",
    "Args": ["nginx", "-g", "daemon off;"],
    "Labels": {"tier": "front", "app": "shop"},
    "Spec": {"Mode": {"Replicated": {"Replicas": 3}}, "Labels": {}},
    "Ports": [{"PublishedPort": 8080, "TargetPort": 80}, {"PublishedPort": 8443, "TargetPort": 443}],
    "Ratio": 0.5,
    "Zero": 0,
    "Empty": "",
    "Null": None,
    "Yes": True,
}


def render(text: str, data: Any = DATA) -> str:
    return Template(text).execute(data)


@pytest.mark.parametrize(("template", "expected"), [
    # Fields, chains, and Go's printing of maps, slices, numbers and bools.
    ("{{.Name}}", "web"),
    ("{{.Spec.Mode.Replicated.Replicas}}", "3"),
    ("{{.Spec.Mode}}", "map[Replicated:map[Replicas:3]]"),
    ("{{.Labels}}", "map[app:shop tier:front]"),
    ("{{.Args}}", "[nginx -g daemon off;]"),
    ("{{.Ports}}", "[map[PublishedPort:8080 TargetPort:80] map[PublishedPort:8443 TargetPort:443]]"),
    ("{{.Ratio}} {{.Yes}} {{.Zero}}", "0.5 true 0"),
    ("{{.}}", go_sprint(DATA)),
    # A key the map lacks is Go's "no value"; so is JSON null.
    ("{{.Missing}}|{{.Spec.Mode.Global}}|{{.Spec.Mode.Global.Nope}}|{{.Null}}", "<no value>|<no value>|<no value>|<no value>"),
    # docker's functions (templates/templates.go), on docker's documented examples.
    ('{{join .Args " , "}}', "nginx , -g , daemon off;"),
    ("{{json .Spec}}", '{"Mode":{"Replicated":{"Replicas":3}},"Labels":{}}'),
    ("{{json .Args}} {{json .Name}} {{json .Null}} {{json .Missing}}", '["nginx","-g","daemon off;"] "web" null null'),
    ('{{json "<&>"}}', '"<&>"'),
    ("{{lower .Image}} {{upper .Name}}", "nginx:1.25 WEB"),
    ('{{split .Image ":"}}', "[nginx 1.25]"),
    ('{{index (split .Image ":") 1}}', "1.25"),
    ('{{title "hello wide-world"}}', "Hello Wide-World"),
    ("{{pad .Name 2 3}}|{{pad .Empty 2 3}}|", "  web   ||"),
    ("{{truncate .Image 5}}|{{truncate .Name 10}}", "nginx|web"),
    ('{{join .Labels ","}}', "front,shop"),
    ("{{range .Ports}}{{println .PublishedPort}}{{end}}", "8080\n8443\n"),
    # Pipelines: the value goes last into the next command.
    ("{{.Name | upper}}", "WEB"),
    ('{{.Name | printf "%s-%d" "svc" | upper}}', "SVC-%!D(STRING=WEB)"),
    ('{{.Spec.Mode.Replicated.Replicas | printf "%03d"}}', "003"),
    ("{{(index .Ports 1).TargetPort}}", "443"),
    # index, len, slice, and the typed-map zero value for a missing label.
    ('{{index .Labels "tier"}}|{{index .Labels "none"}}|{{index .Spec.Labels "x"}}|{{index .Missing "x"}}', "front|||"),
    ("{{index .Args 2}} {{len .Args}} {{len .Labels}} {{len .Name}}", "daemon off; 3 2 3"),
    ("{{slice .Args 1 2}} {{slice .Name 1}}", "[-g] eb"),
    # range: slices, maps in key order, $index/$value, else, break/continue, ints.
    ("{{range $k, $v := .Labels}}{{$k}}={{$v}};{{end}}", "app=shop;tier=front;"),
    ("{{range $i, $a := .Args}}{{if $i}},{{end}}{{$a}}{{end}}", "nginx,-g,daemon off;"),
    ("{{range .Missing}}x{{else}}none{{end}}", "none"),
    ('{{range .Args}}{{if eq . "-g"}}{{continue}}{{end}}{{.}};{{end}}', "nginx;daemon off;;"),
    ('{{range .Args}}{{if eq . "-g"}}{{break}}{{end}}{{.}}{{end}}', "nginx"),
    ("{{range 3}}{{.}}{{end}}", "012"),
    # if / else if / else, with, variables and their scopes.
    ("{{if .Zero}}a{{else if .Empty}}b{{else if .Yes}}c{{else}}d{{end}}", "c"),
    ("{{with .Spec.Mode.Replicated}}{{.Replicas}} replicas{{else}}global{{end}}", "3 replicas"),
    ("{{with .Spec.Mode.Global}}global{{else with .Spec.Mode.Replicated}}{{.Replicas}}{{end}}", "3"),
    ("{{$n := .Name}}{{range .Args}}{{$n}}{{end}}", "webwebweb"),
    ('{{$x := "a"}}{{if .Yes}}{{$x = "b"}}{{end}}{{$x}}', "b"),
    ("{{range .Args}}{{$.Name}}{{end}}", "webwebweb"),
    # Comparisons and logic, short-circuit included.
    ('{{eq .Name "api" "web"}} {{ne .Zero 0}} {{lt 1 2}} {{le 2 2}} {{gt 1.5 2.5}} {{ge "b" "a"}}',
     "true false true true false true"),
    ('{{and .Yes .Name}} {{and .Zero .Missing.X}} {{or .Empty "dflt"}} {{not .Empty}}', "web 0 dflt true"),
    # print, printf, println, and the escapers.
    ('{{print 1 2 "a" "b" 3}}', "1 2ab3"),
    ('{{printf "%v|%q|%5s|%-5s|%.2f|%x|%t|%%" .Args .Name "ab" "ab" .Ratio 255 .Yes}}',
     '[nginx -g daemon off;]|"web"|   ab|ab   |0.50|ff|true|%'),
    ('{{printf "%s %s" "one"}}', "one %!s(MISSING)"),
    ('{{html "<a href=\'x\'>&</a>"}}', "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"),
    ('{{urlquery "a b&c=d"}} {{js "it\'s <b>"}}', "a+b%26c%3Dd it\\'s \\u003Cb\\u003E"),
    # Literals: numbers as Go prints them, characters, raw strings.
    ("{{1.5}} {{1e6}} {{100000.0}} {{0x1F}} {{'a'}} {{-3}}", "1.5 1e+06 100000 31 97 -3"),
    ("{{`raw \\n string`}}", "raw \\n string"),
    # Trim markers and comments.
    ("a  {{- .Name -}}  \n b", "awebb"),
    ("{{- /* a comment */ -}}  x", "x"),
    ("{{.Name}}\n{{- if .Yes}}\n yes{{end}}", "web\n yes"),
])
def test_templates(template: str, expected: str) -> None:
    assert render(template) == expected


@pytest.mark.parametrize(("template", "message"), [
    ("{{.Name", "template: :1: unclosed action"),
    ("{{foo .Name}}", 'template: :1: function "foo" not defined'),
    ("{{end}}", "template: :1: unexpected {{end}}"),
    ("{{if .Name}}x", "template: :1: unexpected EOF"),
    ("{{}}", "template: :1: missing value for command"),
    ("{{if}}{{end}}", "template: :1: missing value for if"),
    ('{{.Name | "x"}}', "template: :1: non executable command in pipeline stage 2"),
    ("{{$x}}", 'template: :1: undefined variable "$x"'),
    ("{{range .Args}}{{$v := .}}{{end}}{{$v}}", 'template: :1: undefined variable "$v"'),
    ("{{break}}", "template: :1: {{break}} outside {{range}}"),
    ('{{"unterminated}}', "template: :1: unterminated quoted string"),
    ("line one\n{{.Name #}}", "template: :2: bad character U+0023 '#'"),
    ('{{define "x"}}{{end}}', "template: :1: {{define}} is not supported by shoal's templates"),
])
def test_parse_errors_are_gos(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        Template(template)
    assert caught.value.message == message


@pytest.mark.parametrize(("template", "message"), [
    ("{{.Name.First}}", 'template: :1:2: executing "" at <.Name.First>: can\'t evaluate field First in type string'),
    ("{{.Null.Field}}", 'template: :1:2: executing "" at <.Null.Field>: nil pointer evaluating interface {}.Field'),
    ("{{.Name 1}}", 'template: :1:2: executing "" at <.Name>: Name is not a method but has arguments'),
    ("{{upper .Zero}}", 'template: :1:8: executing "" at <.Zero>: wrong type for value; expected string; got int'),
    ("{{upper 3}}", 'template: :1:8: executing "" at <3>: expected string; found 3'),
    ("{{upper .Missing}}", 'template: :1:8: executing "" at <.Missing>: invalid value; expected string'),
    ("{{index .Args 7}}", 'template: :1:2: executing "" at <index .Args 7>: error calling index: index out of range: 7'),
    ('{{join .Name ","}}', 'template: :1:2: executing "" at <join .Name ",">: error calling join: expected slice, got '
                          "string"),
    ('{{eq .Zero "0"}}', 'template: :1:2: executing "" at <eq .Zero "0">: error calling eq: incompatible types for '
                        "comparison"),
    ("{{lower}}", 'template: :1:2: executing "" at <lower>: wrong number of args for lower: want 1 got 0'),
    ("{{range .Name}}{{end}}",
     'template: :1:8: executing "" at <{{range .Name}}{{end...>: range can\'t iterate over web'),
    ("x\n  {{.Spec.Mode.Replicated.Replicas.Nope}}",
     'template: :2:4: executing "" at <.Spec.Mode.Replicate...>: can\'t evaluate field Nope in type int'),
])
def test_execution_errors_are_gos(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(template)
    assert caught.value.message == message


class Context(GoValue):
    """A Go struct with a method taking an argument, as docker's formatter contexts are."""

    go_type = "*formatter.exampleContext"

    def go_member(self, name: str) -> Any:
        if name == "Name":
            return "api"
        if name == "Label":
            return lambda key: {"env": "prod"}.get(key, "")
        raise KeyError(name)


def test_methods_take_arguments_and_unknown_fields_name_the_go_type() -> None:
    assert render('{{.Name}} {{.Label "env"}}|{{.Label "other"}}|{{"env" | .Label}}', Context()) == "api prod||prod"
    with pytest.raises(TemplateError, match=r"can't evaluate field Nope in type \*formatter.exampleContext"):
        render("{{.Nope}}", Context())


def test_header_functions_keep_column_names_but_pad_pads() -> None:
    """docker renders a table's header with the same template, its string functions made no-ops."""
    template = Template('{{upper .Name}}|{{json .Name}}|{{truncate .Name 1}}|{{split .Name ":"}}|{{pad .Name 1 1}}')
    assert template.execute({"Name": "NAME"}, HEADER_FUNCTIONS) == "NAME|NAME|NAME|NAME| NAME "
    assert template.execute({"Name": "a:b"}) == 'A:B|"a:b"|a|[a b]| a:b '


def test_partial_output_is_kept_when_execution_fails() -> None:
    assert Template("a{{.Name}}b{{.Name.X}}c").execute_partial(DATA) == "awebb"


@pytest.mark.parametrize(("value", "text"), [
    (0.0, "0"), (2.0, "2"), (0.1, "0.1"), (0.5, "0.5"), (-2.5, "-2.5"), (0.0001, "0.0001"), (1e-05, "1e-05"),
    (999999.0, "999999"), (123456.5, "123456.5"), (1e6, "1e+06"), (1234567.0, "1.234567e+06"), (1e21, "1e+21"),
    (2.5e-7, "2.5e-07"), (1 / 3, "0.3333333333333333"),
])
def test_go_float_matches_fmt_v(value: float, text: str) -> None:
    """%v of a float64 is strconv's shortest %g: an exponent when it is below -4 or at least 6."""
    assert go_float(value) == text
