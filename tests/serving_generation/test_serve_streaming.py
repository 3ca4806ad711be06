"""GenerationJob.on_step: a job streams its own rows' tokens out of a call merged with other requests, and the
rows it stops end without disturbing the other jobs."""

from __future__ import annotations


def test_merged_jobs_each_stream_their_own_rows_and_a_stopped_job_leaves_the_others_unchanged(pyfunc):
    model = pyfunc.unwrap_python_model()
    bodies = [{"prompt": ["a", "b"], "max_tokens": 6, "n": 2, "temperature": 0},
              {"prompt": "c", "max_tokens": 6, "n": 2, "temperature": 0}]
    jobs = [job for body in bodies for job in model.prepare(model.parse(body))]
    expected = model.run_batch(jobs)

    streamed: list[list[list[int]]] = [[[] for _ in range(job.rows)] for job in jobs]

    def streaming(j: int):
        def on_step(step):
            assert len(step.tokens) == jobs[j].rows
            for r, token in enumerate(step.tokens):
                if token is not None:
                    streamed[j][r].append(token)
            return [0, 1] if j == 1 and step.index == 1 else None  # the second client goes away after 2 steps
        return on_step

    for j, job in enumerate(jobs):
        job.on_step = streaming(j)
    results = model.run_batch(jobs)

    assert results[0] == expected[0]
    assert streamed[0] == [s.token_ids for samples in expected[0] for s in samples]
    second = [s for samples in results[1] for s in samples]
    assert [s.finish_reason for s in second] == ["cancelled", "cancelled"]
    assert streamed[1] == [s.token_ids for s in second] == [s.token_ids[:2] for s in expected[1][0]]
