"""Policy-defined functions (`def name(params) = expr`): definition and call-site errors with
their exact spans, recursion refusals, set order, and at run time: calls behave exactly as
the body written inline, lookups inside functions stay lazy and memoised, and their failures
reach the calling rule's `on error`.

The functions here are written over the organisation's helpers (`category`, `account`,
`is_admin`, `subscribed`, `ip_blocked`: themselves functions over tables, from the shipped
directory file) and request fields; the property that a call equals
its body written inline is in `test_properties.py`.
"""

from __future__ import annotations

import pytest

from komm_policy.errors import Diagnostic, Severity
from komm_policy.functions import MAX_INLINED_NODES
from komm_policy.policyset import Source, compile_sources
from komm_policy.runtime import decide

from .shipped import DIRECTORY_SOURCES, SCHEMA, compile_with_directory
from .test_checker import codes, diagnostics, diagnostics_of, locate, related_at, where
from .test_runtime import ACCOUNTS, CountingDirectory, request, summary

FILE = "test.policy"


def errors(text: str) -> list[Diagnostic]:
    return [d for d in diagnostics(text) if d.is_error]


def only(found: list[Diagnostic], code: str) -> Diagnostic:
    assert codes(found) == [code], [str(d) for d in found]
    return found[0]


def at(text: str, needle: str, after: str | None = None) -> tuple[str, int, int, int]:
    """`related_at`'s shape for a needle of the test text."""
    line, column, _, end_column = locate(text, needle, after=after)
    return FILE, line, column, end_column


def compiled(text: str):
    result = compile_with_directory(text, FILE)
    assert result.policy_set is not None, [str(d) for d in result.diagnostics]
    return result.policy_set


# ---------------------------------------------------------------------------------------
# Errors at the definition: reported once, in the body, whatever the calls


def test_unknown_name_in_a_body_is_reported_at_the_definition_once():
    text = ("def may_post(addr) = is_admin(adress)\n"
            "stage rcpt {\n"
            "  rule a: when may_post(sender) accept\n"
            "  rule b: when not may_post(rcpt) reject\n"
            "  default accept\n}\n")
    d = only(errors(text), "E102")
    assert where(d) == locate(text, "adress")
    assert d.hint == "did you mean `addr`?"


def test_unknown_function_in_a_body_suggests_defined_functions():
    text = ("def listed(addr) = category(addr) != none\n"
            "def member(addr) = lsited(addr)\n"
            "stage rcpt {\n  rule a: when member(rcpt) accept\n  default accept\n}\n")
    d = only(errors(text), "E101")
    assert where(d) == locate(text, "lsited")
    assert d.hint == "did you mean `listed`?"


def test_unknown_record_field_in_a_body():
    text = ("def list_name(addr) = category(addr).title\n"
            "stage rcpt {\n  rule a: when list_name(rcpt) == \"x\" accept\n"
            "  default accept\n}\n")
    d = only(errors(text), "E107")
    assert where(d) == locate(text, "title")


def test_a_broken_definition_is_not_reported_again_at_its_calls():
    # the call's argument is fine: only the body's own mistake is reported
    text = ("def bad(x) = x matches \"not a regex\" and unknown_thing\n"
            "stage data {\n  rule a: when bad(subject) accept\n  default accept\n}\n")
    assert codes(errors(text)) == ["E102"]


def test_unused_parameter_is_a_warning_at_the_parameter():
    text = ("def admin(addr, list) = is_admin(addr)\n"
            "stage rcpt {\n  rule a: when admin(sender, rcpt) accept\n  default accept\n}\n")
    d = only(diagnostics(text), "W211")
    assert d.severity is Severity.WARNING
    assert where(d) == locate(text, "list")
    assert d.message == "parameter `list` of `admin` is never used"


# ---------------------------------------------------------------------------------------
# Errors at each call site: what fails only for these arguments or at this stage


def test_argument_of_the_wrong_type_is_reported_at_the_argument():
    text = ("def blocked(addr) = ip_blocked(addr)\n"
            "stage connect {\n  rule a: when blocked(client.ip) reject\n  default accept\n}\n"
            "stage mail {\n  rule b: when blocked(sender) reject\n  default accept\n}\n")
    d = only(errors(text), "E142")
    assert where(d) == locate(text, "sender", after="rule b")
    assert d.message.startswith("in `blocked()` called here: in `ip_blocked()` called here: "
                                "column `ip` holds network, but the key is address")
    assert related_at(d) == at(text, "addr", after="ip_blocked(")
    assert d.related is not None and d.related.message == "in the body of `blocked`"


def test_operator_mismatch_is_reported_at_the_call():
    text = ("def same(a, b) = a == b\n"
            "stage rcpt {\n"
            "  rule ok: when same(sender, rcpt) accept\n"
            "  rule bad: when same(client.ip, rcpt) accept\n"
            "  default accept\n}\n")
    d = only(errors(text), "E105")
    assert where(d) == locate(text, "same(client.ip, rcpt)")
    assert d.message == "in `same()` called here: `==` cannot combine ip and address"
    assert related_at(d) == at(text, "==")


def test_each_bad_call_is_reported_at_its_own_site():
    text = ("def is_big(x) = x > 10MB\n"
            "stage data {\n"
            "  rule a: when is_big(message.size) accept\n"
            "  rule b: when is_big(subject) reject\n"
            "  rule c: when is_big(sender) reject\n"
            "  default accept\n}\n")
    found = errors(text)
    assert codes(found) == ["E105", "E105"]
    assert [where(d) for d in found] == [locate(text, "is_big(subject)"),
                                         locate(text, "is_big(sender)")]


def test_function_reading_a_header_is_data_stage_only():
    text = ("def from_list() = header(\"List-Id\") != none\n"
            "stage data {\n  rule a: when from_list() discard\n  default accept\n}\n"
            "stage rcpt {\n  rule b: when from_list() reject\n  default accept\n}\n")
    d = only(errors(text), "E103")
    assert where(d) == locate(text, "from_list()", after="rule b")
    assert d.message == ("in `from_list()` called here: `header()` is not available at "
                         "stage `rcpt`")
    assert d.hint == "it reads the message, which exists only at: data"


def test_function_reading_a_field_of_a_later_stage():
    text = ("def to_postmaster() = rcpt == \"postmaster@solawi.example\"\n"
            "stage mail {\n  rule a: when to_postmaster() accept\n  default accept\n}\n")
    d = only(errors(text), "E103")
    assert where(d) == locate(text, "to_postmaster()", after="rule a")
    assert "`rcpt` is not available at stage `mail`" in d.message


@pytest.mark.parametrize(("where_text", "needle"), [
    ("stage rcpt {\n  rule a: when true accept\n    on error reject \"{list_name(rcpt)}\"\n"
     "  default accept\n}\n", "list_name(rcpt)"),
    ("stage rcpt {\n  rule a: when true accept\n  default reject \"{list_name(rcpt)}\"\n}\n",
     "list_name(rcpt)"),
    ("let fixed = list_name(\"info@solawi.example\")\n"
     "stage rcpt {\n  rule a: when fixed == \"x\" accept\n  default accept\n}\n",
     "list_name(\"info@solawi.example\")"),
])
def test_function_calling_a_lookup_is_a_lookup(where_text, needle):
    text = "def list_name(addr) = category(addr).name\n" + where_text
    d = only(errors(text), "E108")
    assert where(d) == locate(text, needle)
    assert "cannot call the lookup `lookup()`" in d.message
    assert d.message.startswith("in `list_name()` called here: in `category()` called here: ")


def test_function_reading_the_request_cannot_define_a_constant():
    text = ("def me() = sender\n"
            "let mine = me()\n"
            "stage mail {\n  rule a: when sender == mine accept\n  default accept\n}\n")
    d = only(errors(text), "E109")
    assert where(d) == locate(text, "me()", after="let mine")


def test_pure_function_may_define_a_constant():
    text = ("def host(addr) = lower(domain(addr))\n"
            "let home = host(\"x@Solawi.Example\")\n"
            "stage mail {\n  rule a: when domain(sender) == home accept\n"
            "  default reject\n}\n")
    policy = compiled(text)
    assert summary(decide(policy, request("mail", sender="A@solawi.example"),
                          CountingDirectory())) == ("accept", None, "a")
    assert summary(decide(policy, request("mail", sender="a@other.example"),
                          CountingDirectory()))[0] == "reject"


def test_wrong_number_of_arguments():
    text = ("def may_post(addr, list) = is_admin(addr) or subscribed(addr, category(list))\n"
            "stage rcpt {\n  rule a: when may_post(sender) accept\n  default accept\n}\n")
    d = only(errors(text), "E104")
    assert where(d) == locate(text, "may_post(sender)")
    assert d.message == "`may_post()` takes 2 arguments, got 1"
    assert d.hint == "signature: may_post(addr, list)"
    assert related_at(d) == at(text, "may_post")


def test_keyword_arguments_are_for_table_lookups_only():
    text = ("def admin(addr) = is_admin(addr)\n"
            "stage rcpt {\n  rule a: when admin(addr = sender) accept\n  default accept\n}\n")
    d = only(errors(text), "E104")
    assert where(d) == locate(text, "addr = sender")
    assert d.message == "`admin()` takes no `name = value` arguments"


def test_a_function_named_without_a_call():
    text = ("def admin(addr) = is_admin(addr)\n"
            "stage rcpt {\n  rule a: when admin == true accept\n  default accept\n}\n")
    d = only(errors(text), "E102")
    assert where(d) == locate(text, "admin", after="rule a: when")
    assert d.hint == "call it: `admin(addr)`"


def test_warnings_about_one_use_of_a_general_function_are_not_reported():
    # `x == none` is always false for a never-none argument (W203 inline); for a function
    # that also serves optional arguments this is not a mistake of the policy
    text = ("def absent(x) = x == none\n"
            "stage data {\n  rule a: when absent(subject) accept\n"
            "  rule b: when absent(header(\"X\")) accept\n  default accept\n}\n")
    assert diagnostics(text) == []


# ---------------------------------------------------------------------------------------
# Names, order, recursion


def test_defined_twice():
    text = "def f(x) = x\ndef f(y) = y\n"
    d = only(errors(text), "E150")
    assert where(d) == locate(text, "f", after="def f(x) = x\ndef ")
    assert d.message == "function `f` is defined twice"
    assert related_at(d)[1:3] == (1, 5)


@pytest.mark.parametrize(("text", "needle", "what"), [
    ("def lower(x) = x\n", "lower", "a built-in function"),
    ("def exists(x) = x\n", "exists", "a built-in function"),
    ("def sender(x) = x\n", "sender", "a request field"),
    ("def client(x) = x\n", "client", "a request field"),
    ("let limit = 1\ndef limit(x) = x\n", "limit", "a `let` constant"),
])
def test_function_name_clashes(text, needle, what):
    d = only(errors(text), "E150")
    assert where(d) == locate(text, needle, after="def ")
    assert d.message == f"function `{needle}` would hide {what} of the same name"


def test_let_named_like_a_function():
    text = "def limit(x) = x\nlet limit = 1\n"
    d = only(errors(text), "E111")
    assert where(d) == locate(text, "limit", after="let ")
    assert d.message == "`let limit` would hide a function of the same name"


def test_parameter_listed_twice():
    text = "def f(a, b, a) = a == b\n"
    d = only(errors(text), "E151")
    assert where(d) == locate(text, "a", after="def f(a, b, ")
    assert related_at(d)[1:3] == (1, 7)


def test_parameter_that_is_a_reserved_word():
    text = "def f(any) = true\n"
    d = only(errors(text), "E014")
    assert where(d) == locate(text, "any")


def test_direct_recursion():
    text = ("def deep(x) = x == \"a\" or deep(lower(x))\n"
            "stage mail {\n  rule a: when deep(sender) accept\n  default accept\n}\n")
    d = only(errors(text), "E152")
    assert where(d) == locate(text, "deep", after="or ")
    assert d.message == "function `deep` calls itself"


def test_mutual_recursion_is_reported_at_every_call_of_the_cycle():
    text = ("def a(x) = b(x)\n"
            "def b(x) = x == \"\" or c(x)\n"
            "def c(x) = not a(x)\n"
            "stage mail {\n  rule r: when a(sender) accept\n  default accept\n}\n")
    found = errors(text)
    assert codes(found) == ["E152", "E152", "E152"]
    assert [where(d) for d in found] == [locate(text, "b", after="def a(x) = "),
                                         locate(text, "c", after="or "),
                                         locate(text, "a", after="not ")]
    assert found[0].message == "function `a` calls `b`, which calls `a` again"
    assert related_at(found[0])[1:3] == (2, 5)


def test_recursion_through_a_template():
    text = 'def f(x) = "{f(x)}" == ""\n'
    d = only(errors(text), "E152")
    assert where(d) == locate(text, "f", after='"{')


def test_use_before_definition_in_the_same_file():
    text = ("stage mail {\n  rule r: when early(sender) accept\n  default accept\n}\n"
            "def early(x) = x == \"\"\n")
    d = only(errors(text), "E153")
    assert where(d) == locate(text, "early")
    assert d.message == "function `early` is used before its definition"
    assert related_at(d)[1:3] == (5, 5)


def test_use_before_definition_inside_another_function():
    text = "def first(x) = second(x)\ndef second(x) = x == 1\n"
    d = only(errors(text), "E153")
    assert where(d) == locate(text, "second")


def test_definitions_of_an_earlier_file_serve_later_files():
    directory = "def admin(addr) = is_admin(addr)\n"
    rules = "stage mail {\n  rule r: when admin(sender) accept\n  default reject\n}\n"
    assert diagnostics_of({"00-directory.policy": directory, "10-rules.policy": rules}) == []
    found = [d for d in diagnostics_of({"10-rules.policy": rules,
                                        "20-directory.policy": directory}) if d.is_error]
    d = only(found, "E153")
    assert d.span.file == "10-rules.policy"
    assert d.related is not None and d.related.span.file == "20-directory.policy"


def test_calls_expanding_without_bound_are_refused():
    # f0 is 3 nodes; each f(i+1) calls f(i) twice: f17 expands to ~2**18 nodes
    lines = ["def f0(x) = x == 1"]
    lines += [f"def f{i}(x) = f{i - 1}(x) and f{i - 1}(x)" for i in range(1, 18)]
    text = "\n".join(lines) + "\nlet big = f17(1)\nstage mail {\n  rule r: when big accept\n}\n"
    found = errors(text)
    assert codes(found) == ["E155"]
    assert f"more than {MAX_INLINED_NODES} expression nodes" in found[0].message


# ---------------------------------------------------------------------------------------
# Run time: a call is its body inline


LISTS = """
def listed(addr) = category(addr) != none
def may_post(addr, list) = is_admin(addr) or subscribed(addr, category(list))
def posting_ok(addr, list) = listed(list) and may_post(addr, list)
"""


def test_functions_decide_like_the_shipped_rules():
    text = LISTS + """
    stage rcpt {
        rule unknown_list: when not listed(rcpt) reject 550 5.1.1 "No such list {rcpt}"
        rule may_not_post: when not posting_ok(sender, rcpt)
            reject 550 5.7.1 "{sender} may not post to {category(rcpt).name}"
        default accept
    }
    """
    policy = compiled(text)
    cases = [
        ("a@example.org", "nope@solawi.example",
         ("reject", "550 5.1.1 No such list nope@solawi.example", "unknown_list")),
        ("Anna.Mueller@gmail.com", "gemuese@solawi.example",
         ("reject", "550 5.7.1 anna.mueller@gmail.com may not post to Gemuese",
          "may_not_post")),
        ("jane@solawi.example", "gemuese@solawi.example", ("accept", None, "default")),
        ("peter.schmidt@web.example", "Info@Solawi.example", ("accept", None, "default")),
    ]
    for sender, rcpt, expected in cases:
        assert summary(decide(policy, request("rcpt", sender=sender, to=[rcpt]),
                              CountingDirectory())) == expected, (sender, rcpt)


def test_lookups_inside_functions_are_lazy():
    text = LISTS + """
    stage rcpt {
        rule vip: when sender == "vip@example.org" accept
        rule r: when not posting_ok(sender, rcpt) reject
        default accept
    }
    """
    directory = CountingDirectory()
    decision = decide(compiled(text), request("rcpt", sender="vip@example.org",
                                              to=["info@solawi.example"]), directory)
    assert summary(decision) == ("accept", None, "vip")
    assert directory.calls == []
    # `listed` fails first: neither is_admin nor subscribed is looked up
    directory = CountingDirectory()
    decide(compiled(text), request("rcpt", sender="a@example.org",
                                   to=["nope@solawi.example"]), directory)
    assert directory.calls == [("message_categories", "nope@solawi.example")]


def test_lookups_inside_functions_are_memoised():
    text = LISTS + """
    stage rcpt {
        rule a: when not listed(rcpt) reject
        rule b: when not posting_ok(sender, rcpt) reject
        rule c: when may_post(sender, rcpt) and listed(rcpt) accept
        default tempfail
    }
    """
    directory = CountingDirectory()
    decision = decide(compiled(text), request("rcpt", sender="peter.schmidt@web.example",
                                              to=["info@solawi.example"]), directory)
    assert summary(decision) == ("accept", None, "c")
    # category(rcpt) is reached five times, is_admin and subscribed twice each (and both
    # read the sender's accounts)
    assert directory.count("message_categories") == 1
    assert directory.count("account") == 1
    assert directory.count("admin_identities") == 1
    assert directory.count("subscriptions") == 1
    assert [r.function for r in decision.lookups] == [
        "lookup(message_categories: active, email_address)", ACCOUNTS,
        "exists(admin_identities: identity)",
        "exists(subscriptions: active, category_id, subscriber_account_id)"]


def test_failures_inside_functions_reach_the_calling_rules_on_error():
    text = LISTS + """
    stage rcpt {
        rule a: when not posting_ok(sender, rcpt) reject 550 5.7.1 "no"
            on error tempfail 451 4.3.2 "directory trouble"
        default accept
    }
    """
    directory = CountingDirectory(fail={"account"})
    decision = decide(compiled(text), request("rcpt", sender="a@example.org",
                                              to=["info@solawi.example"]), directory)
    assert summary(decision) == ("tempfail", "451 4.3.2 directory trouble", "a")
    assert "account backend unreachable" in (decision.cause or "")


def test_failures_inside_functions_without_on_error_give_the_fallback():
    text = LISTS + """
    stage rcpt {
        rule a: when not posting_ok(sender, rcpt) reject 550 5.7.1 "no"
        default accept
    }
    """
    decision = decide(compiled(text), request("rcpt", sender="peter.schmidt@web.example",
                                              to=["info@solawi.example"]),
                      CountingDirectory(fail={"message_categories"}))
    assert decision.fallback is True
    assert summary(decision)[:2] == (
        "tempfail", "451 4.3.0 Directory unavailable, please try again later")


def test_quantifiers_in_a_body_do_not_clobber_the_callers_variables():
    # the argument `r` reads the caller's quantifier variable while the body's own
    # quantifier runs: both need their own slot
    text = """
    def one_of(x, lists) = any l in lists: l == x
    stage rcpt {
        rule a: when any r in envelope.to: one_of(r, ["info@solawi.example"]) and r == rcpt
            reject 550 5.7.1 "hit {rcpt}"
        default accept
    }
    """
    policy = compiled(text)
    hit = request("rcpt", sender="a@example.org", to=["x@example.org", "info@solawi.example"])
    miss = request("rcpt", sender="a@example.org", to=["info@solawi.example", "x@example.org"])
    assert summary(decide(policy, hit, CountingDirectory()))[0] == "reject"
    assert summary(decide(policy, miss, CountingDirectory()))[0] == "accept"


def test_parameters_shadow_fields_and_the_callers_variables_are_not_visible():
    text = """
    def is_postmaster(sender) = local_part(sender) == "postmaster"
    stage rcpt {
        rule a: when is_postmaster(rcpt) accept
        default reject
    }
    """
    policy = compiled(text)
    assert summary(decide(policy, request("rcpt", sender="x@example.org",
                                          to=["postmaster@solawi.example"]),
                          CountingDirectory()))[0] == "accept"
    assert summary(decide(policy, request("rcpt", sender="postmaster@example.org",
                                          to=["info@solawi.example"]),
                          CountingDirectory()))[0] == "reject"
    hidden = ("def sees_r(x) = r == x\n"
              "stage rcpt {\n  rule a: when any r in envelope.to: sees_r(r) accept\n"
              "  default accept\n}\n")
    d = only(errors(hidden), "E102")
    assert where(d) == locate(hidden, "r", after="def sees_r(x) = ")


def test_functions_in_templates_statements_and_address_comparisons():
    text = """
    def list_of(addr) = category(addr).name
    def shout(text) = upper(text)
    def from_domain(addr, dom) = domain(addr) == dom
    stage data {
        rule tag: when from_domain(sender, "EXAMPLE.org")
            add_header "X-List" shout(list_of(envelope.to[0]))
            log "list={list_of(envelope.to[0])}"
            continue
        default accept
    }
    """
    decision = decide(compiled(text), request("data", sender="a@example.org",
                                              to=["info@solawi.example"]),
                      CountingDirectory())
    assert [(m.name, m.value) for m in decision.modifications] == [("X-List", "INFO")]
    assert decision.logs == ("list=Info",)


@pytest.mark.parametrize("condition", ["limit_hit and message.size > 1KB",
                                       "over(20MB) and message.size > 1KB"])
def test_constant_calls_fold_at_load_time(condition):
    text = f"""
    def over(x) = x > 10MB
    let limit_hit = over(20MB)
    stage data {{
        rule a: when {condition} reject
        default accept
    }}
    """
    policy = compiled(text)
    (rule,) = policy.stages["data"].rules
    alone = compiled("stage data { rule a: when message.size > 1KB reject default accept }")
    # the constant side dropped out: the same closure as the comparison alone, no `and`
    assert rule.cond.__qualname__ == alone.stages["data"].rules[0].cond.__qualname__
    assert "both" not in rule.cond.__qualname__
    assert summary(decide(policy, request("data", sender="a@example.org", to=["b@x.org"],
                                          size=5000), CountingDirectory()))[0] == "reject"


def test_functions_do_not_change_the_set_of_rules_or_their_names():
    text = LISTS + "stage rcpt {\n  rule a: when listed(rcpt) accept\n  default reject\n}\n"
    result = compile_sources([*DIRECTORY_SOURCES, Source("00-d.policy", LISTS),
                              Source("10-r.policy", text.replace(LISTS, ""))], schema=SCHEMA)
    assert result.policy_set is not None
    assert result.policy_set.rule_count == 1


def _shape(value: object, depth: int = 0) -> object:
    """A closure tree as data: function names, nested closures and captured constants."""
    if callable(value) and getattr(value, "__closure__", None) is not None and depth < 12:
        return (value.__qualname__,  # type: ignore[attr-defined]
                tuple(_shape(cell.cell_contents, depth + 1)
                      for cell in value.__closure__))  # type: ignore[attr-defined]
    if callable(value):
        return getattr(value, "__qualname__", repr(value))
    if isinstance(value, tuple):  # e.g. the key getters of a table lookup
        return tuple(_shape(item, depth + 1) for item in value)
    slots = getattr(type(value), "__slots__", None)
    if slots and not isinstance(value, str):  # e.g. a lookup site: its settings, not its id
        return (type(value).__qualname__,
                tuple(_shape(getattr(value, name, None), depth + 1) for name in slots))
    return repr(value)


def test_a_call_compiles_to_the_closures_of_its_body_inline():
    # no call frame, no argument binding at run time: the compiled rule is the same tree
    # of closures as the body written in the rule
    inline = """
    stage rcpt {
        rule a: when ip_blocked(client.ip) reject
        rule b: when category(rcpt) == none reject
        rule c: when not (is_admin(sender) or subscribed(sender, category(rcpt))) reject
        rule d: when any r in envelope.to: lower(r) == "x@example.org" reject
        default accept
    }
    """
    called = """
    def blocked(ip) = ip_blocked(ip)
    def list_of(address) = category(address)
    def may_post(address, list) = is_admin(address) or subscribed(address, list_of(list))
    def is_x(a) = lower(a) == "x@example.org"
    stage rcpt {
        rule a: when blocked(client.ip) reject
        rule b: when list_of(rcpt) == none reject
        rule c: when not may_post(sender, rcpt) reject
        rule d: when any r in envelope.to: is_x(r) reject
        default accept
    }
    """
    by_hand, by_call = compiled(inline).stages["rcpt"], compiled(called).stages["rcpt"]
    assert [r.name for r in by_call.rules] == ["a", "b", "c", "d"]
    for (cond_hand, _), (cond_call, _) in zip(by_hand.steps, by_call.steps, strict=True):
        assert _shape(cond_call) == _shape(cond_hand)
    # the shape does see lookups
    assert "table_lookup" in str(_shape(by_call.steps[1][0]))


# ---------------------------------------------------------------------------------------
# Functions over table lookups


def test_table_lookups_inside_functions_are_checked_per_call_lazy_and_memoised():
    from .test_table_lookups import ROWS, SCHEMA, directory_for

    text = """
    def verified(address) = any e in lookup_all("account_emails", email = address,
                                                 verified = true): e.account_id > 0
    def writer(address, topic) = any e in lookup_all("account_emails", email = address,
                                                      verified = true):
        exists("subscriptions", account_id = e.account_id, topic = topic,
               permission = "Write")
    stage rcpt {
        rule vip: when sender == "vip@example.org" accept
        rule unverified: when not verified(sender) reject 550 5.7.1 "unverified"
        rule reader: when not writer(sender, "info") reject 550 5.7.1 "read only"
        rule both: when verified(sender) and writer(sender, "info") accept
        default tempfail
    }
    """
    result = compile_sources([Source("t.policy", text)], schema=SCHEMA)
    assert result.policy_set is not None, [str(d) for d in result.diagnostics]
    policy = result.policy_set
    assert set(policy.needs.tables) == {"account_emails", "subscriptions"}

    def run(sender: str) -> tuple[tuple, list]:
        directory = directory_for(policy, ROWS)
        decision = decide(policy, request("rcpt", sender=sender, to=["info@x.example"]),
                          directory)
        return summary(decision), [r.function for r in decision.lookups]

    assert run("vip@example.org") == (("accept", None, "vip"), [])
    outcome, lookups = run("anna@example.org")
    assert outcome == ("accept", None, "both")
    # account_emails read once although three calls reach it; subscriptions once
    assert lookups == ["lookup_all(account_emails: email, verified)",
                       "exists(subscriptions: account_id, permission, topic)"]
    assert run("bob@example.org")[0] == ("reject", "550 5.7.1 read only", "reader")
    assert run("nobody@example.org")[0] == ("reject", "550 5.7.1 unverified", "unverified")

    bad = text.replace('writer(sender, "info")', "writer(sender, 5)", 1)
    found = [d for d in compile_sources([Source("t.policy", bad)], schema=SCHEMA).diagnostics
             if d.is_error]
    assert [d.code for d in found] == ["E142"]
    assert found[0].message.startswith("in `writer()` called here: ")
    # the key is the parameter itself: the error points at the argument
    assert (found[0].span.line, found[0].span.column) == locate(
        bad, "5", after="not writer(sender, ")[:2]
