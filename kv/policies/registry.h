// Every eviction policy, one line each, in the order --help, the sweep and
// the window list them. Adding a policy: its file in kv/policies/ (which
// defines NAME_registration()) and one line here; the CLI help, the spec
// parser, `eval --sweep`, the window's choices and the policy tests all
// iterate this list.
KVSCOPE_POLICY(full)
KVSCOPE_POLICY(window)
KVSCOPE_POLICY(streamingllm)
KVSCOPE_POLICY(h2o)
KVSCOPE_POLICY(tova)
KVSCOPE_POLICY(snapkv)
KVSCOPE_POLICY(pyramidkv)
