# Names vulture reports that are used, only not by a call it can see: pydantic validators
# and model_config, msgspec/struct fields read as JSON, handlers registered by name,
# pytest fixtures, http.server hooks. Regenerate after review with
#   .venv/bin/vulture cogo --make-whitelist > scripts/vulture_whitelist.py
cmd  # unused variable (cogo/agents/build_test.py:110)
CodegenActor  # unused class (cogo/agents/codegen.py:84)
EchoActor  # unused class (cogo/agents/echo.py:32)
IndexerActor  # unused class (cogo/agents/indexer.py:50)
verify  # unused function (cogo/agents/notifier.py:83)
NotifierActor  # unused class (cogo/agents/notifier.py:107)
_._done_sub  # unused attribute (cogo/bench/system.py:212)
bench_agent  # unused function (cogo/bench/agent.py:38): an @app.agent handler, run by cogo run
bench_steps  # unused function (cogo/bench/agent.py): an @app.agent handler, run by cogo run
RunCancelled  # unused class (cogo/errors/workflows.py)
_._safe  # unused method (cogo/http/artifacts.py:32)
generated_at  # unused variable (cogo/http/flow.py:77)
model_config  # unused variable (cogo/http/orchestrator.py:85)
_._no_nulls  # unused method (cogo/http/orchestrator.py:96)
model_config  # unused variable (cogo/http/orchestrator.py:109)
model_config  # unused variable (cogo/http/orchestrator.py:121)
model_config  # unused variable (cogo/http/schemas.py:26)
model_config  # unused variable (cogo/http/schemas.py:32)
_.direct  # unused attribute (cogo/projections/feed.py:213)
_.direct  # unused attribute (cogo/projections/feed.py:256)
bin_of  # unused function (cogo/projections/histogram.py:46)
finished_at  # unused variable (cogo/streams/status.py)
p50_ms  # unused variable (cogo/rollouts/gates.py:80)
model_config  # unused variable (cogo/rollouts/http.py:53)
next_attempt_at  # unused variable (cogo/streams/events.py:53)
admitted_at  # unused variable (cogo/streams/flow.py:59)
_.should_exit  # unused attribute (cogo/runtime/system.py:306)
protocol_version  # unused variable (cogo/testing.py:348)
_.do_POST  # unused method (cogo/testing.py:350)
_.log_message  # unused method (cogo/testing.py:424)
_.daemon_threads  # unused attribute (cogo/testing.py:428)
cogo_env  # unused variable (cogo/testing.py:501)
cogo_env  # unused function (cogo/testing.py:504)
chat_server  # unused function (cogo/testing.py:509)
model_config  # unused variable (cogo/workflows/definition.py:57)
_._event_types  # unused method (cogo/workflows/definition.py:92)
_._route  # unused method (cogo/workflows/definition.py:103)
resolved_assignment  # unused variable (cogo/workflows/definition.py:143)
_._one_target  # unused method (cogo/workflows/definition.py:154)
resolved_assignment  # unused variable (cogo/workflows/definition.py:177)
_._workflow_id  # unused method (cogo/workflows/definition.py:210)
model_config  # unused variable (cogo/workflows/planner.py:71)
_.resolved_assignment  # unused attribute (cogo/workflows/planner.py:403)
model_config  # unused variable (cogo/workflows/schedules.py:61)
_._cron  # unused method (cogo/workflows/schedules.py:74)
_._no_nulls  # unused method (cogo/workflows/schedules.py:82)
_._one_clock  # unused method (cogo/workflows/schedules.py:91)
last_error_code  # unused variable (cogo/streams/catalogue/): an event data field, read as JSON (SQL views, the dashboard)
usage_estimated  # unused variable (cogo/streams/catalogue/): an event data field, read as JSON (SQL views, the dashboard)
reply_model  # unused variable (cogo/streams/catalogue/): an event data field, read as JSON (SQL views, the dashboard)
previous_baseline  # unused variable (cogo/streams/catalogue/): an event data field, read as JSON (SQL views, the dashboard)
runId  # unused variable (cogo/streams/catalogue/): an event data field, read as JSON (SQL views, the dashboard)
nodeId  # unused variable (cogo/streams/catalogue/): an event data field, read as JSON (SQL views, the dashboard)
failed_nodes  # unused variable (cogo/streams/catalogue/): an event data field, read as JSON (SQL views, the dashboard)
node_type  # unused variable (cogo/streams/catalogue/): an event data field, read as JSON (SQL views, the dashboard)
deadline_at  # unused variable (cogo/streams/catalogue/): an event data field, read as JSON (SQL views, the dashboard)
retry_at_iso  # unused variable (cogo/streams/catalogue/): an event data field, read as JSON (SQL views, the dashboard)

# cogo.sdk.harness.FakeContext: the handler under test calls ctx.wait_signal (durable agents' API)
wait_signal
_.get_model  # unused method (cogo/integrations/openai_agents.py): the Agents SDK's ModelProvider interface, called by its Runner
_.stream_response  # unused method (cogo/integrations/openai_agents.py): the Agents SDK's Model interface (Runner.run_streamed)
_.request_stream  # unused method (cogo/integrations/pydantic_ai.py): Pydantic AI's Model interface, called by its agent graph
run_context  # unused variable (cogo/integrations/pydantic_ai.py): a parameter of Pydantic AI's Model.request_stream, passed by name
_.get_wrapper_toolset  # unused method (cogo/integrations/pydantic_ai.py): Pydantic AI's capability interface, called per run
_.handle_async_request  # unused method (cogo/integrations/transport.py): httpx's transport interface
inject  # unused function (cogo/tracing.py): a submitter's headers with its traceparent, for child calls (ctx.call)
usage_disputed  # unused variable (cogo/streams/catalogue/): an event data field, read as JSON (SQL views, the dashboard)
cancel_schedule  # unused function (cogo/streams/schedule.py): the schedule API shared with durable timers (ctx.sleep, cancellation); tests/test_security_seal.py calls it
child_route  # unused variable (cogo/streams/catalogue/): call_started's field, read as JSON
dur_wait  # unused function (cogo/bench/durable.py:42): an @app.agent handler, run by cogo run
dur_call  # unused function (cogo/bench/durable.py:48): an @app.agent handler, run by cogo run
dur_echo  # unused function (cogo/bench/durable.py:56): an @app.agent handler, run by cogo run
cancel_schedule  # unused function (cogo/streams/schedule.py:38): the module's agreed API (held retries use it)
DOMAINS  # unused variable (cogo/errors/__init__.py): read by scripts/gen_reference.py and tests/test_errors.py
outcome_seq  # unused variable (cogo/workflows/record.py): a column of workflow_runs, stored by cogo/projections/runs.py
parent_run_id  # unused variable (cogo/workflows/record.py): a column of workflow_runs, read by the dashboard's SQL
gates_passed  # unused variable (cogo/workflows/record.py): a column of workflow_runs, read by the metrics' SQL
gates_failed  # unused variable (cogo/workflows/record.py): a column of workflow_runs, read by the metrics' SQL
