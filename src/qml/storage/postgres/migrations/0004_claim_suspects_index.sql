-- qml migration 0004: an index of crashed jobs, for claims bounded in suspects.
--
-- A suspect is an Enqueued job whose crashes (times a worker died while running
-- it) reached a claim's threshold. A server takes at most one suspect per claim
-- and none while it runs one, so a job on its last chance is not quarantined for
-- dying beside a poison job. The claim finds the suspects it may take on this
-- index (almost always empty), not by walking the queue.
CREATE INDEX {{table_suspects_idx}} ON {{schema}}.{{table}}
    (queue, priority DESC, enqueued_at, id) WHERE state = 'enqueued' AND crashes > 0;
