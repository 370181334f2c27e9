-- qml migration 0003: indexes of the dashboard's job lists.
--
-- A Jobs page filtered by queue or by method reads one keyset scan per state on
-- an index (queue|method, state, id), so a page costs a few index probes whatever
-- the table size and however rare the state (no walk over a whole queue to find
-- its few Failed jobs). They replace the (queue, id) and (method, id) indexes, so
-- writes maintain as many indexes as before. The live states get no (state, id)
-- index: the claim and recovery queries must keep their own partial indexes.
DROP INDEX {{schema}}.{{table_queue_idx}};
CREATE INDEX {{table_queue_state_idx}} ON {{schema}}.{{table}} (queue, state, id);
DROP INDEX {{schema}}.{{table_method_idx}};
CREATE INDEX {{table_method_state_idx}} ON {{schema}}.{{table}} (method, state, id);
-- Joint statistics: without them the planner multiplies the share of a queue by
-- the share of a state, may expect thousands of rows where there are none, and
-- walk the primary key backwards through the whole table to fill a page.
CREATE STATISTICS {{schema}}.{{table_queue_state_stats}} (mcv) ON queue, state
    FROM {{schema}}.{{table}};
CREATE STATISTICS {{schema}}.{{table_method_state_stats}} (mcv) ON method, state
    FROM {{schema}}.{{table}};
