//! Templates below are written for these tests in the style of the families they name
//! (ChatML/Qwen, Llama 3.1, Mistral); expected strings are what Jinja2 with HF's settings
//! produces for them.

use super::*;
use serde_json::json;

/// ChatML with a default system prompt and a tools block, Qwen2.5 style.
const CHATML_TOOLS: &str = r#"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nCall a function by its signature:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
    {%- elif message.role == 'tool' %}
        {{- '<|im_start|>user\n<tool_response>\n' + message.content + '\n</tool_response><|im_end|>\n' }}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for call in message.tool_calls %}
            {{- '\n<tool_call>\n{"name": "' + call.function.name + '", "arguments": ' + (call.function.arguments | tojson) + '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\n' + message.content.strip() + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

/// Llama 3.1 style: bos_token, a date_string default, system message split off.
const LLAMA31: &str = r#"{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"#;

/// Mistral style: [INST] blocks, roles must alternate or the template raises.
const MISTRAL: &str = r#"{%- if messages[0]['role'] == 'system' %}
    {%- set system_prefix = messages[0]['content'] + '\n\n' %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set system_prefix = '' %}
    {%- set turns = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in turns %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Roles must go user, assistant, user, ... after an optional system message.') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- set prefix = system_prefix if loop.first else '' %}
        {{- '[INST] ' + prefix + message['content'] + ' [/INST]' }}
    {%- else %}
        {{- ' ' + message['content'] + eos_token }}
    {%- endif %}
{%- endfor %}
"#;

fn chatml() -> ChatTemplate {
    ChatTemplate::new(CHATML_TOOLS, None, Some("<|im_end|>".into())).unwrap()
}

fn llama() -> ChatTemplate {
    ChatTemplate::new(
        LLAMA31,
        Some("<|begin_of_text|>".into()),
        Some("<|eot_id|>".into()),
    )
    .unwrap()
}

fn mistral() -> ChatTemplate {
    ChatTemplate::new(MISTRAL, Some("<s>".into()), Some("</s>".into())).unwrap()
}

fn render_source(source: &str, messages: &[ChatMessage], extra: serde_json::Value) -> String {
    ChatTemplate::new(source, None, None)
        .unwrap()
        .render(messages, false, extra)
        .unwrap()
}

#[test]
fn chatml_adds_default_system_prompt_and_generation_prompt() {
    let out = chatml()
        .render(
            &[ChatMessage::new("user", "  Hi there \n")],
            true,
            json!(null),
        )
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi there<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn chatml_keeps_given_system_prompt_without_generation_prompt() {
    let messages = [
        ChatMessage::new("system", "Be terse."),
        ChatMessage::new("user", "2+2?"),
        ChatMessage::new("assistant", "4"),
    ];
    let out = chatml().render(&messages, false, json!({})).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nBe terse.<|im_end|>\n\
         <|im_start|>user\n2+2?<|im_end|>\n\
         <|im_start|>assistant\n4<|im_end|>\n"
    );
}

#[test]
fn chatml_renders_tools_and_tool_calls_with_python_json_spacing() {
    // Keys written in sorted order so the expectation holds with or without serde_json's
    // preserve_order feature.
    let tool = json!({
        "function": {
            "description": "Current weather in a city",
            "name": "get_weather",
            "parameters": {
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "type": "object"
            }
        },
        "type": "function"
    });
    let messages: Vec<ChatMessage> = serde_json::from_value(json!([
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"type": "function", "function": {"arguments": {"city": "Zürich"}, "name": "get_weather"}}
        ]},
        {"role": "tool", "content": "{\"temp_c\": 21}", "tool_call_id": "call_0"}
    ]))
    .unwrap();
    let out = chatml()
        .render(&messages, true, json!({"tools": [tool]}))
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\n\
         Call a function by its signature:\n<tools>\n\
         {\"function\": {\"description\": \"Current weather in a city\", \"name\": \"get_weather\", \
         \"parameters\": {\"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"], \
         \"type\": \"object\"}}, \"type\": \"function\"}\n</tools><|im_end|>\n\
         <|im_start|>user\nWeather in Zürich?<|im_end|>\n\
         <|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n</tool_call><|im_end|>\n\
         <|im_start|>user\n<tool_response>\n{\"temp_c\": 21}\n</tool_response><|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn llama_writes_bos_default_date_and_trims_content() {
    let messages = [
        ChatMessage::new("system", " You are a pirate. "),
        ChatMessage::new("user", "Hello!\n"),
    ];
    let out = llama().render(&messages, true, json!(null)).unwrap();
    assert_eq!(
        out,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n\
         You are a pirate.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn llama_takes_date_string_from_extra_and_works_without_system() {
    let out = llama()
        .render(
            &[ChatMessage::new("user", "Hi")],
            false,
            json!({"date_string": "01 Jan 2030"}),
        )
        .unwrap();
    assert_eq!(
        out,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 01 Jan 2030\n\n<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    );
}

#[test]
fn mistral_renders_alternating_turns() {
    let messages = [
        ChatMessage::new("system", "Answer in French."),
        ChatMessage::new("user", "Hello"),
        ChatMessage::new("assistant", "Bonjour"),
        ChatMessage::new("user", "Thanks"),
    ];
    let out = mistral().render(&messages, true, json!(null)).unwrap();
    assert_eq!(
        out,
        "<s>[INST] Answer in French.\n\nHello [/INST] Bonjour</s>[INST] Thanks [/INST]"
    );
}

#[test]
fn mistral_raise_exception_carries_the_templates_message() {
    let messages = [
        ChatMessage::new("user", "one"),
        ChatMessage::new("user", "two"),
    ];
    let err = mistral().render(&messages, true, json!(null)).unwrap_err();
    match &err {
        ChatTemplateError::Raised(msg) => assert_eq!(
            msg,
            "Roles must go user, assistant, user, ... after an optional system message."
        ),
        other => panic!("expected Raised, got {other:?}"),
    }
    assert!(err.to_string().contains("Roles must go user, assistant"));
}

/// Loops over a message's parts, as multimodal templates (Llama 3.2, Qwen2-VL, Gemma 3) do.
const PARTS_LOOP: &str = r#"{%- for message in messages %}
{{- message.role }}:
{%- if message.content is string %} {{ message.content }}
{%- else %}
{%- for part in message['content'] | selectattr('type', 'equalto', 'text') %} {{ part['text'] }}{% endfor %}
{%- endif %}
{{- '|' }}
{%- endfor %}"#;

#[test]
fn a_template_that_loops_over_parts_gets_them_as_a_list_and_strings_stay_strings() {
    let template = ChatTemplate::new(PARTS_LOOP, None, None).unwrap();
    assert_eq!(template.content_format(), ContentFormat::OpenAi);
    let messages: Vec<ChatMessage> = serde_json::from_value(json!([
        {"role": "system", "content": "plain"},
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "text", "text": "here"}
        ]},
        {"role": "assistant", "content": null, "tool_calls": []}
    ]))
    .unwrap();
    assert_eq!(
        template.render(&messages, false, json!(null)).unwrap(),
        "system: plain|user: look here|assistant:|"
    );
}

#[test]
fn a_string_template_gets_text_parts_joined_and_null_content_empty() {
    let template = chatml();
    assert_eq!(template.content_format(), ContentFormat::String);
    let as_parts: Vec<ChatMessage> = serde_json::from_value(json!([
        {"role": "user", "content": [
            {"type": "text", "text": "first line"},
            {"type": "text", "text": "second line"}
        ]},
        {"role": "assistant", "content": null, "tool_calls": []},
        {"role": "user"}
    ]))
    .unwrap();
    let as_strings = [
        ChatMessage::new("user", "first line\nsecond line"),
        ChatMessage {
            extra: as_parts[1].extra.clone(),
            ..ChatMessage::new("assistant", "")
        },
        ChatMessage::new("user", ""),
    ];
    assert_eq!(
        template.render(&as_parts, true, json!(null)).unwrap(),
        template.render(&as_strings, true, json!(null)).unwrap()
    );
}

#[test]
fn image_parts_are_refused_with_the_message_index() {
    let messages: Vec<ChatMessage> = serde_json::from_value(json!([
        {"role": "user", "content": "hi"},
        {"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
        ]}
    ]))
    .unwrap();
    for template in [chatml(), ChatTemplate::new(PARTS_LOOP, None, None).unwrap()] {
        match template.render(&messages, true, json!(null)) {
            Err(ChatTemplateError::Unsupported(why)) => {
                assert!(
                    why.contains("messages[1]") && why.contains("image_url"),
                    "{why}"
                )
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn developer_messages_reach_templates_without_that_role_as_system() {
    let with_developer = [
        ChatMessage::new("developer", "be brief"),
        ChatMessage::new("user", "hi"),
    ];
    let with_system = [
        ChatMessage::new("system", "be brief"),
        ChatMessage::new("user", "hi"),
    ];
    let t = chatml();
    assert_eq!(
        t.render(&with_developer, true, json!(null)).unwrap(),
        t.render(&with_system, true, json!(null)).unwrap()
    );
    // A template that names the role gets it unchanged.
    let own = "{% for m in messages %}{% if m.role == 'developer' %}D{% endif %}{{ m.role }};{% endfor %}";
    assert_eq!(
        render_source(own, &with_developer, json!(null)),
        "Ddeveloper;user;"
    );
}

#[test]
fn content_format_detection_and_override() {
    assert_eq!(ContentFormat::detect(CHATML_TOOLS), ContentFormat::String);
    assert_eq!(ContentFormat::detect(LLAMA31), ContentFormat::String);
    assert_eq!(ContentFormat::detect(PARTS_LOOP), ContentFormat::OpenAi);
    for looping in [
        "{% for c in message.content %}{% endfor %}",
        "{%- for item in messages[0]['content'] -%}{% endfor %}",
        "{% for x in m[\"content\"] | reverse %}{% endfor %}",
    ] {
        assert_eq!(
            ContentFormat::detect(looping),
            ContentFormat::OpenAi,
            "{looping}"
        );
    }
    assert_eq!(
        ContentFormat::detect("{% for tool_call in message.tool_calls %}{% endfor %}"),
        ContentFormat::String
    );
    assert_eq!("openai".parse(), Ok(ContentFormat::OpenAi));
    assert!("parts".parse::<ContentFormat>().is_err());
    let forced = chatml().with_content_format(ContentFormat::OpenAi);
    assert_eq!(forced.content_format(), ContentFormat::OpenAi);
}

#[test]
fn messages_deserialize_from_openai_shapes() {
    let messages: Vec<ChatMessage> = serde_json::from_value(json!([
        {"role": "user", "content": "hi"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": null, "tool_calls": []},
        {"role": "assistant"}
    ]))
    .unwrap();
    assert_eq!(messages[0], ChatMessage::new("user", "hi"));
    assert!(matches!(messages[1].content, MessageContent::Parts(ref p) if p.len() == 1));
    assert_eq!(messages[2].content, MessageContent::Null);
    assert!(messages[2].extra.contains_key("tool_calls"));
    assert_eq!(messages[3].content, MessageContent::Null);
}

#[test]
fn python_string_and_dict_methods_work() {
    let source = r#"{{ messages[0].content.strip().upper() }}|{{ messages[0].content.split(',') | length }}|
{{- messages[0].content.startswith('  a') }}|{{ messages[0].content.lstrip().endswith('c  ') }}|
{%- for k, v in extra_map.items() %}{{ k }}={{ v }};{% endfor %}|{{ extra_map.get('missing', 'dflt') }}"#;
    let out = render_source(
        source,
        &[ChatMessage::new("user", "  a,b,c  ")],
        json!({"extra_map": {"x": 1, "y": "two"}}),
    );
    assert_eq!(out, "A,B,C|3|True|True|x=1;y=two;|dflt");
}

#[test]
fn tojson_follows_python_json_dumps() {
    let data = json!({"a": [1, 2.0], "b": {}, "c": "é\"<\n", "d": null, "e": true, "f": []});
    let out = render_source("{{ data | tojson }}", &[], json!({ "data": data }));
    assert_eq!(
        out,
        r#"{"a": [1, 2.0], "b": {}, "c": "é\"<\n", "d": null, "e": true, "f": []}"#
    );
    let pretty = render_source(
        "{{ data | tojson(indent=2) }}",
        &[],
        json!({"data": {"a": [1, 2], "b": {}}}),
    );
    assert_eq!(pretty, "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}");
    let ascii = render_source(
        "{{ s | tojson(ensure_ascii=true) }}",
        &[],
        json!({"s": "é😀"}),
    );
    assert_eq!(ascii, r#""\u00e9\ud83d\ude00""#);
    let compact = render_source(
        "{{ data | tojson(separators=[',', ':']) }}",
        &[],
        json!({"data": {"a": [1, 2]}}),
    );
    assert_eq!(compact, r#"{"a":[1,2]}"#);
}

#[test]
fn whitespace_control_matches_trim_and_lstrip_blocks() {
    // Block tags on their own lines vanish entirely; the template's final newline is dropped.
    let source = "{% for message in messages %}\n    {% if message.role == 'user' %}\nU: {{ message.content }}\n    {% endif %}\n{% endfor %}\nend\n";
    let messages = [
        ChatMessage::new("user", "a"),
        ChatMessage::new("assistant", "b"),
        ChatMessage::new("user", "c"),
    ];
    assert_eq!(
        render_source(source, &messages, json!(null)),
        "U: a\nU: c\nend"
    );
}

#[test]
fn booleans_and_none_print_as_python_does() {
    let out = render_source(
        "{{ t }} {{ f }} {{ n }} {{ missing }}|{{ t | tojson }}",
        &[],
        json!({"t": true, "f": false, "n": null}),
    );
    assert_eq!(out, "True False None |true");
}

#[test]
fn strftime_now_formats_the_current_date() {
    let before = strftime::format(&strftime::DateTime::now_utc(), "%Y-%m-%d");
    let out = render_source("{{ strftime_now('%Y-%m-%d') }}", &[], json!(null));
    let after = strftime::format(&strftime::DateTime::now_utc(), "%Y-%m-%d");
    assert!(
        out == before || out == after,
        "{out} not in [{before}, {after}]"
    );
}

#[test]
fn generation_tags_are_accepted_and_render_nothing() {
    let source =
        "{% for m in messages %}{%- generation %}[{{ m.content }}]{% endgeneration -%}{% endfor %}";
    let out = render_source(
        source,
        &[
            ChatMessage::new("assistant", "x"),
            ChatMessage::new("assistant", "y"),
        ],
        json!(null),
    );
    assert_eq!(out, "[x][y]");
}

#[test]
fn errors_distinguish_compile_render_and_bad_extra() {
    assert!(matches!(
        ChatTemplate::new("{% for %}", None, None),
        Err(ChatTemplateError::Compile(_))
    ));
    let t = ChatTemplate::new("{{ messages[0].content + 1 }}", None, None).unwrap();
    let err = t
        .render(&[ChatMessage::new("user", "x")], false, json!(null))
        .unwrap_err();
    assert!(matches!(err, ChatTemplateError::Render(_)), "{err:?}");
    let err = t.render(&[], false, json!([1])).unwrap_err();
    assert!(
        matches!(err, ChatTemplateError::ExtraNotAnObject(_)),
        "{err:?}"
    );
}

#[test]
fn chat_template_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
}

#[test]
fn the_final_message_can_be_left_open_for_the_model_to_continue() {
    let t = chatml();
    let messages = [
        ChatMessage::new("user", "Name a colour."),
        ChatMessage::new("assistant", "Sure, the colour is "),
    ];
    let closed = t.render(&messages, false, json!(null)).unwrap();
    let open = t.render_continuing(&messages, json!(null)).unwrap();
    assert!(
        open.ends_with("<|im_start|>assistant\nSure, the colour is"),
        "{open:?}"
    );
    assert!(closed.starts_with(&open) && closed.len() > open.len());
    // A template that trims the content: cut after the trimmed text.
    let trimming = ChatTemplate::new(
        "{% for m in messages %}[{{ m.content | trim }}]{% endfor %}",
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        trimming.render_continuing(&messages, json!(null)).unwrap(),
        "[Name a colour.][Sure, the colour is"
    );
    let empty = [ChatMessage::new("assistant", " ")];
    assert!(matches!(
        t.render_continuing(&empty, json!(null)),
        Err(ChatTemplateError::Unsupported(_))
    ));
}

#[test]
fn tool_call_arguments_sent_as_json_text_reach_the_template_as_objects() {
    let source = "{% for m in messages %}{% for c in m.tool_calls or [] %}{{ c.function.name }}{{ c.function.arguments | tojson }};{% endfor %}{% endfor %}";
    let messages: Vec<ChatMessage> = serde_json::from_value(json!([
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"city\": \"Oslo\"}"}},
            {"id": "2", "type": "function", "function": {"name": "g", "arguments": {"n": 1}}},
            {"id": "3", "type": "function", "function": {"name": "h", "arguments": "not json"}}
        ]}
    ]))
    .unwrap();
    assert_eq!(
        render_source(source, &messages, json!(null)),
        r#"f{"city": "Oslo"};g{"n": 1};h"not json";"#
    );
}

/// Gemma 3 style: the system prompt joins the first user turn, `model` is the assistant's
/// role, roles must alternate, content is a string or a list of typed parts.
const GEMMA_STYLE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"#;

#[test]
fn gemma_style_templates_fold_the_system_prompt_and_insist_on_alternation() {
    let t = ChatTemplate::new(GEMMA_STYLE, Some("<bos>".into()), Some("<eos>".into())).unwrap();
    let messages = vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", " Hi "),
        ChatMessage::new("assistant", "Hello."),
        ChatMessage::new("user", "Bye"),
    ];
    let text = t.render(&messages, true, json!({})).unwrap();
    assert_eq!(
        text,
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.\
         <end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
    let twice = vec![ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
    let err = t.render(&twice, true, json!({})).unwrap_err().to_string();
    assert!(err.contains("roles must alternate"), "{err}");
}
