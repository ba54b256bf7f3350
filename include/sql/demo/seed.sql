-- WedSync demo seeder: server-side, set-based (generate_series + INSERT ... SELECT), deterministic.
--
-- Load include/sql/demo/schema.sql first, then this file, then either
--     SELECT demo.seed(1);                          -- everything in one call, one session
-- or, to use several sessions at once (what devstack/demo.py does):
--     SELECT demo.seed_base(demo.weddings_for_scale(8));   -- once: tenants, users, suppliers, ...
--     SELECT demo.seed_weddings(1, 400);                  -- any number of disjoint ranges, in parallel
--     SELECT demo.seed_weddings(401, 800);
--     SELECT demo.seed_finish();                          -- once: sequences, materialized view, ANALYZE
--
-- Every id is computed from the wedding number (never drawn from a sequence while loading), and every
-- "random" value is a hash of ids, so the same scale gives the same rows whatever the parallelism.
-- seed_finish() then moves every sequence past the data so later inserts never collide.
-- Per wedding: 150 guests, 40 timeline events, 6 bookings, 3 form responses, 2 journeys, 8 payments,
-- 30 files, 42 communications (2 exact duplicates), 30 audit rows, 100 events.

CREATE SCHEMA IF NOT EXISTS demo;
COMMENT ON SCHEMA demo IS 'Demo data generator (functions only, no tables).';

-- Weddings per scale unit: one unit is about 10 MB of table + index + TOAST data.
CREATE OR REPLACE FUNCTION demo.weddings_per_unit() RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT 80';

CREATE OR REPLACE FUNCTION demo.weddings_for_scale(scale numeric) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
'SELECT greatest(1, round(scale * demo.weddings_per_unit()))::integer';

-- A non-negative pseudo-random integer from (key, salt): deterministic and inlined by the planner.
CREATE OR REPLACE FUNCTION demo.h(k bigint, salt integer) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
'SELECT hashint8(k * 1000003 + salt) & 2147483647';

-- A deterministic uuid for (kind, key).
CREATE OR REPLACE FUNCTION demo.uid(kind text, k bigint) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
'SELECT md5(kind || '':'' || k)::uuid';

CREATE OR REPLACE FUNCTION demo.first_name(n integer) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$SELECT (ARRAY['Emma', 'Oliver', 'Amélie', 'José', 'Zoë', 'Siobhán', 'Björn', 'Łukasz', 'François',
    'Chloé', 'Priya', 'Mohammed', 'Wei', 'Yuki', 'Aoife', 'Oisín', 'Søren', 'Renée', 'Zsófia', 'Ayşe',
    'Jack', 'Olivia', 'Ana María', 'Noah', 'Isla', 'Mateus', 'Fatima', 'Dmitrij', 'Ngozi', 'Kai'])
    [1 + n % 30]$$;

CREATE OR REPLACE FUNCTION demo.last_name(n integer) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$SELECT (ARRAY['Smith', 'Jones', 'O''Brien', 'Müller', 'García', 'Nguyễn', 'Kowalski', 'Dubois',
    'Rossi', 'Patel', 'Chen', 'Ó Súilleabháin', 'van der Berg', 'Ødegaard', 'Håkansson', 'Yılmaz',
    'Murphy', 'Taylor', 'Novák', 'Papadopoulos', 'Okafor', 'Tanaka', 'Fernández', 'Williams', 'Brown'])
    [1 + n % 25]$$;

-- Tenants, accounts, suppliers, couples, vendors and forms for n weddings (wipes previous demo data).
CREATE OR REPLACE FUNCTION demo.seed_base(n integer) RETURNS void
    LANGUAGE plpgsql AS
$fn$
DECLARE
    n_sup integer := ceil(n / 5.0);
    n_org integer := ceil(n / 50.0);
BEGIN
    TRUNCATE public.organizations, public.users, public.user_profiles, public.suppliers, public.clients,
        public.weddings, public.guests, public.timeline_events, public.vendors, public.bookings,
        public.forms, public.form_responses, public.journey_instances, public.payments, public.files,
        public.communications, audit.audit_logs, platform.event_logs;

    INSERT INTO public.organizations (id, name, slug, country, settings, created_at, updated_at)
    SELECT demo.uid('org', o),
           (ARRAY['Golden Hour', 'Confetti & Co', 'Les Mariés', 'Ever After', 'Bloom'])[1 + o % 5]
               || ' Weddings ' || o,
           'org-' || o,
           (ARRAY['GB', 'IE', 'FR', 'ES', 'DE', 'US'])[1 + o % 6],
           jsonb_build_object('timezone', 'Europe/London', 'plan', (ARRAY['free', 'pro', 'studio'])[1 + o % 3],
                              'features', jsonb_build_array('guests', 'timeline', 'payments')),
           timestamptz '2022-01-01 09:00:00+00' + o * interval '1 day',
           timestamptz '2023-06-01 09:00:00+00' + o * interval '1 hour'
    FROM generate_series(1, n_org) o;

    -- Supplier owners first (keys 1..n_sup), then couples (keys n_sup+1..n_sup+n).
    INSERT INTO public.users (id, organization_id, email, phone, last_sign_in_at, created_at, updated_at)
    SELECT demo.uid('user', u),
           CASE WHEN u <= n_sup THEN demo.uid('org', (u - 1) / 10 + 1) END,
           CASE WHEN u <= n_sup THEN 'owner' || u || '@supplier' || u || '.example.com'
                ELSE 'couple' || (u - n_sup) || '@example.net' END,
           CASE WHEN demo.h(u, 1) % 4 = 0 THEN NULL ELSE '+44 7700 ' || lpad((u % 1000000)::text, 6, '0') END,
           CASE WHEN demo.h(u, 2) % 5 = 0 THEN NULL
                ELSE timestamptz '2025-01-01 00:00:00+00' - (demo.h(u, 3) % 400000) * interval '1 minute' END,
           timestamptz '2022-06-01 00:00:00+00' + (demo.h(u, 4) % 500000) * interval '1 minute',
           timestamptz '2024-06-01 00:00:00+00' + (demo.h(u, 5) % 500000) * interval '1 minute'
    FROM generate_series(1, n_sup + n) u;

    INSERT INTO public.user_profiles (user_id, display_name, locale, avatar, preferences, created_at, updated_at)
    SELECT demo.uid('user', u),
           demo.first_name(demo.h(u, 6)) || ' ' || demo.last_name(demo.h(u, 7)),
           (ARRAY['en-GB', 'fr-FR', 'es-ES', 'de-DE', 'ga-IE'])[1 + u % 5],
           CASE WHEN demo.h(u, 8) % 3 = 0 THEN sha256(convert_to('avatar:' || u, 'UTF8'))
                || decode(md5('avatar:' || u), 'hex') END,
           CASE WHEN demo.h(u, 9) % 4 = 0 THEN NULL
                ELSE jsonb_build_object('newsletter', u % 2 = 0, 'theme', 'light', 'emoji', '💍') END,
           timestamptz '2022-06-01 00:00:00+00' + (demo.h(u, 4) % 500000) * interval '1 minute',
           timestamptz '2024-06-01 00:00:00+00' + (demo.h(u, 5) % 500000) * interval '1 minute'
    FROM generate_series(1, n_sup + n) u;

    INSERT INTO public.suppliers (id, organization_id, owner_user_id, business_name, category, contact_email,
                                  tags, settings, created_at, updated_at)
    OVERRIDING SYSTEM VALUE
    SELECT s,
           demo.uid('org', (s - 1) / 10 + 1),
           demo.uid('user', s),
           demo.last_name(demo.h(s, 10)) || ' ' ||
               (ARRAY['Photography', 'Venues', 'Flowers', 'Catering', 'Planning', 'Band', 'DJ', 'Cakes',
                      'Films'])[1 + s % 9],
           (enum_range(NULL::public.supplier_category))[1 + s % 9],
           CASE WHEN s % 7 = 0 THEN NULL ELSE 'hello@supplier' || s || '.example.com' END,
           CASE s % 4 WHEN 0 THEN ARRAY['luxury', 'outdoor'] WHEN 1 THEN ARRAY['budget']
                      WHEN 2 THEN '{}'::text[] ELSE ARRAY['destination', 'beach', 'boho'] END,
           jsonb_build_object('currency', 'GBP', 'deposit_percent', 10 + s % 40,
                              'signature', 'Merci beaucoup ✨ — ' || s),
           timestamptz '2022-02-01 00:00:00+00' + s * interval '3 hours',
           timestamptz '2024-02-01 00:00:00+00' + s * interval '2 hours'
    FROM generate_series(1, n_sup) s;

    -- One couple per wedding; client id = wedding id.
    INSERT INTO public.clients (id, supplier_id, user_id, partner1, partner2, email, phone, created_at, updated_at)
    OVERRIDING SYSTEM VALUE
    SELECT c,
           (c - 1) / 5 + 1,
           CASE WHEN demo.h(c, 11) % 10 = 0 THEN NULL ELSE demo.uid('user', n_sup + c) END,
           demo.first_name(demo.h(c, 12)) || ' ' || demo.last_name(demo.h(c, 13)),
           CASE WHEN demo.h(c, 14) % 20 = 0 THEN NULL
                ELSE demo.first_name(demo.h(c, 15)) || ' ' || demo.last_name(demo.h(c, 16)) END,
           'couple' || c || '@example.net',
           CASE WHEN c % 3 = 0 THEN NULL ELSE '+44 7911 ' || lpad(c::text, 6, '0') END,
           timestamptz '2023-01-01 00:00:00+00' + (demo.h(c, 17) % 700000) * interval '1 minute',
           timestamptz '2024-09-01 00:00:00+00' + (demo.h(c, 18) % 300000) * interval '1 minute'
    FROM generate_series(1, n) c;

    INSERT INTO public.vendors (id, organization_id, name, category, contact, rating, created_at, updated_at)
    SELECT v,
           demo.uid('org', (v - 1) / 20 + 1),
           demo.last_name(demo.h(v, 19)) || ' & ' || demo.last_name(demo.h(v, 20)) || ' ' ||
               (ARRAY['Florals', 'Catering', 'Sound', 'Cars', 'Cakes'])[1 + v % 5],
           (enum_range(NULL::public.supplier_category))[1 + demo.h(v, 21) % 9],
           jsonb_build_object('phone', '+44 20 7946 ' || lpad((v % 10000)::text, 4, '0'),
                              'email', 'bookings@vendor' || v || '.example.org'),
           CASE WHEN v % 6 = 0 THEN NULL ELSE round((demo.h(v, 22) % 500) / 100.0, 2) END,
           timestamptz '2022-03-01 00:00:00+00' + v * interval '5 hours',
           timestamptz '2024-03-01 00:00:00+00' + v * interval '5 hours'
    FROM generate_series(1, n_org * 20) v;

    -- Two forms per supplier with a large (several kB) jsonb definition.
    INSERT INTO public.forms (id, supplier_id, title, definition, published, created_at, updated_at)
    SELECT demo.uid('form', s * 2 + k),
           s,
           (ARRAY['Wedding day questionnaire', 'Questionnaire du mariage 💐'])[k + 1],
           jsonb_build_object(
               'version', 3,
               'questions', (SELECT jsonb_agg(jsonb_build_object(
                   'id', 'q' || q, 'type', (ARRAY['text', 'choice', 'date', 'number'])[1 + q % 4],
                   'label', 'Question ' || q || ' — tell us about your day (' || md5(s || ':' || q) || ')',
                   'required', q % 3 = 0,
                   'options', CASE WHEN q % 4 = 1 THEN jsonb_build_array('Yes', 'No', 'Peut-être') END))
                   FROM generate_series(1, 40) q)),
           k = 0 OR s % 3 <> 0,
           timestamptz '2023-01-01 00:00:00+00' + s * interval '1 day',
           timestamptz '2024-01-01 00:00:00+00' + s * interval '1 day'
    FROM generate_series(1, n_sup) s, generate_series(0, 1) k;

    -- Platform-level audit rows (no wedding): one per supplier, ids after the per-wedding ranges (30 each).
    INSERT INTO audit.audit_logs (id, wedding_id, actor_id, action, table_name, row_pk, old_data, new_data,
                                  ip_address, created_at)
    OVERRIDING SYSTEM VALUE
    SELECT n * 30 + s, NULL, demo.uid('user', s), 'login', 'users', demo.uid('user', s)::text,
           NULL, NULL,
           CASE WHEN s % 4 = 0 THEN NULL ELSE ('2001:db8::' || to_hex(s))::inet END,
           timestamptz '2024-01-01 00:00:00+00' + s * interval '7 minutes'
    FROM generate_series(1, n_sup) s;
END;
$fn$;

-- Weddings lo..hi and everything that hangs off them. Disjoint ranges may run in parallel sessions.
CREATE OR REPLACE FUNCTION demo.seed_weddings(lo integer, hi integer) RETURNS void
    LANGUAGE plpgsql AS
$fn$
BEGIN
    INSERT INTO public.weddings (id, organization_id, supplier_id, client_id, wedding_date, venue_name,
                                 venue_address, guest_count_estimate, budget, status, theme, tags,
                                 created_at, updated_at)
    OVERRIDING SYSTEM VALUE
    SELECT w,
           demo.uid('org', (w - 1) / 50 + 1),
           (w - 1) / 5 + 1,
           w,
           date '2024-01-01' + demo.h(w, 30) % 731,
           (ARRAY['Château de la Loire', 'Cliveden House', 'The Old Barn', 'Castillo de Santa Bárbara',
                  'Lough Eske Castle', 'Kew Gardens', 'Villa Balbiano', NULL])[1 + demo.h(w, 31) % 8],
           CASE WHEN w % 5 = 0 THEN NULL ELSE w || ' Rue des Fleurs, 75001 Paris' END,
           120 + demo.h(w, 32) % 80,
           CASE WHEN w % 11 = 0 THEN NULL ELSE 8000 + (demo.h(w, 33) % 4200000) / 100.0 END,
           (enum_range(NULL::public.wedding_status))[1 + demo.h(w, 34) % 5],
           CASE WHEN w % 9 = 0 THEN NULL
                ELSE jsonb_build_object('colours', jsonb_build_array('sage', 'ivory', 'gold'),
                                        'style', (ARRAY['rustic', 'classic', 'boho', 'modern'])[1 + w % 4],
                                        'hashtag', '#Wedding' || w || ' 🎉') END,
           CASE WHEN w % 4 = 0 THEN '{}'::text[] ELSE (ARRAY['summer', 'outdoor', 'vip'])[1:1 + w % 3] END,
           timestamptz '2023-01-01 00:00:00+00' + (demo.h(w, 35) % 700000) * interval '1 minute',
           timestamptz '2024-09-01 00:00:00+00' + (demo.h(w, 36) % 300000) * interval '1 minute'
    FROM generate_series(lo, hi) w;

    INSERT INTO public.guests (id, wedding_id, first_name, last_name, email, rsvp, dietary, plus_one,
                               table_number, notes, tags, created_at, updated_at)
    SELECT i, w, first_name, last_name,
           CASE WHEN r % 5 = 0 THEN NULL ELSE 'guest' || i || '@guests.example.org' END,
           rsvp,
           CASE WHEN r % 7 = 0 THEN NULL
                WHEN r % 7 = 1 THEN '{}'::jsonb
                ELSE jsonb_build_object(
                    'diet', (ARRAY['none', 'vegetarian', 'vegan', 'halal', 'kosher', 'pescatarian'])[1 + r % 6],
                    'allergies', (ARRAY['[]', '["nuts"]', '["gluten", "lactose"]', '["shellfish"]'])[1 + r % 4]::jsonb,
                    'child_meal', r % 13 = 0) END,
           r % 4 = 0,
           CASE WHEN rsvp = 'attending' THEN (1 + r % 18)::smallint END,
           CASE WHEN r % 100 = 0 THEN
                    -- ~3 kB of incompressible text: stored out of line in the TOAST table.
                    (SELECT string_agg(md5(i || ':' || k), ' ') FROM generate_series(1, 100) k)
                WHEN r % 10 = 1 THEN 'Sits near the dance floor 💃 — prefers ' || first_name
                ELSE NULL END,
           CASE WHEN r % 3 = 0 THEN NULL ELSE (ARRAY['family', 'friends', 'work', 'bride', 'groom'])[1 + r % 5:2 + r % 4] END,
           created_at,
           created_at + (r % 50000) * interval '1 minute'
    FROM (
        SELECT (w - 1) * 150 + g AS i, w, g,
               demo.h((w - 1) * 150 + g, 40) AS r,
               demo.first_name(demo.h((w - 1) * 150 + g, 41)) AS first_name,
               demo.last_name(demo.h((w - 1) * 150 + g, 42)) AS last_name,
               (ARRAY['attending', 'attending', 'attending', 'declined', 'pending', 'maybe'])
                   [1 + demo.h((w - 1) * 150 + g, 43) % 6]::public.rsvp_status AS rsvp,
               timestamptz '2023-06-01 00:00:00+00' + (demo.h((w - 1) * 150 + g, 44) % 500000) * interval '1 minute'
                   AS created_at
        FROM generate_series(lo, hi) w, generate_series(1, 150) g
    ) x;

    INSERT INTO public.timeline_events (id, wedding_id, title, starts_at, duration, location, sort_order, details,
                                        created_at, updated_at)
    OVERRIDING SYSTEM VALUE
    SELECT (w.id - 1) * 40 + e, w.id,
           (ARRAY['Getting ready', 'First look', 'Ceremony', 'Confetti 🎊', 'Group photos', 'Drinks reception',
                  'Wedding breakfast', 'Speeches', 'Cake cutting', 'First dance 💃'])[1 + (e - 1) % 10]
               || CASE WHEN e > 10 THEN ' (' || (e - 1) / 10 + 1 || ')' ELSE '' END,
           (w.wedding_date + time '08:00') AT TIME ZONE 'Europe/London' + (e - 1) * interval '20 minutes',
           (ARRAY[15, 20, 30, 45, 60, 90])[1 + demo.h((w.id - 1) * 40 + e, 50) % 6] * interval '1 minute',
           CASE WHEN e % 6 = 0 THEN NULL ELSE (ARRAY['Bridal suite', 'Chapel', 'Garden', 'Great hall'])[1 + e % 4] END,
           e * 10,
           CASE WHEN e % 4 = 0 THEN NULL
                ELSE jsonb_build_object('owner', demo.first_name(demo.h((w.id - 1) * 40 + e, 51)),
                                        'music', e % 3 = 0, 'notes', 'Prévoir ' || e || ' chaises') END,
           w.created_at + e * interval '1 hour',
           w.updated_at + e * interval '1 minute'
    FROM public.weddings w, generate_series(1, 40) e
    WHERE w.id BETWEEN lo AND hi;

    INSERT INTO public.bookings (id, wedding_id, vendor_id, status, amount, deposit, service_window,
                                 created_at, updated_at)
    SELECT (w.id - 1) * 6 + b, w.id,
           ((w.id - 1) / 50) * 20 + 1 + demo.h((w.id - 1) * 6 + b, 60) % 20,
           (ARRAY['requested', 'confirmed', 'confirmed', 'cancelled'])[1 + demo.h((w.id - 1) * 6 + b, 61) % 4],
           (demo.h((w.id - 1) * 6 + b, 62) % 500000) / 100.0 + 150,
           CASE WHEN b % 3 = 0 THEN NULL ELSE (demo.h((w.id - 1) * 6 + b, 62) % 500000) / 1000.0 END,
           CASE WHEN b = 6 THEN NULL
                ELSE tstzrange((w.wedding_date + time '10:00') AT TIME ZONE 'UTC' + b * interval '1 hour',
                               (w.wedding_date + time '10:00') AT TIME ZONE 'UTC' + (b + 3) * interval '1 hour') END,
           w.created_at + b * interval '1 day',
           w.updated_at + b * interval '1 hour'
    FROM public.weddings w, generate_series(1, 6) b
    WHERE w.id BETWEEN lo AND hi;

    INSERT INTO public.form_responses (id, form_id, wedding_id, answers, submitted_at, created_at, updated_at)
    OVERRIDING SYSTEM VALUE
    SELECT (w.id - 1) * 3 + f, demo.uid('form', w.supplier_id * 2 + f % 2), w.id,
           jsonb_build_object('q1', 'Nous voulons une fête inoubliable ' || w.id,
                              'q2', f % 2 = 0, 'q3', w.wedding_date,
                              'q4', demo.h(w.id * 3 + f, 70) % 300,
                              'free_text', CASE WHEN f = 3 THEN 'No speeches after 10pm please 🙏' END),
           CASE WHEN f = 3 AND w.id % 2 = 0 THEN NULL ELSE w.created_at + f * interval '10 days' END,
           w.created_at + f * interval '9 days',
           w.updated_at
    FROM public.weddings w, generate_series(1, 3) f
    WHERE w.id BETWEEN lo AND hi;

    INSERT INTO public.journey_instances (id, wedding_id, journey_name, current_step, state, started_at,
                                          completed_at, created_at, updated_at)
    SELECT demo.uid('journey', (w.id - 1) * 2 + j), w.id,
           (ARRAY['onboarding', 'final-details'])[j],
           demo.h(w.id * 2 + j, 80) % 7,
           jsonb_build_object('emails_sent', demo.h(w.id * 2 + j, 81) % 12, 'paused', w.id % 17 = 0),
           w.created_at + j * interval '2 days',
           CASE WHEN j = 1 THEN w.created_at + interval '30 days' END,
           w.created_at + j * interval '2 days',
           w.updated_at
    FROM public.weddings w, generate_series(1, 2) j
    WHERE w.id BETWEEN lo AND hi;

    INSERT INTO public.payments (id, wedding_id, client_id, invoice_number, amount, currency, status, due_date,
                                 paid_at, created_at, updated_at)
    OVERRIDING SYSTEM VALUE
    SELECT (w.id - 1) * 8 + p, w.id, w.client_id, 100000 + (w.id - 1) * 8 + p,
           round(coalesce(w.budget, 20000) / 8, 2),
           CASE WHEN w.id % 10 = 0 THEN 'EUR' ELSE 'GBP' END,
           st,
           w.wedding_date - (8 - p) * 30,
           CASE WHEN st IN ('paid', 'refunded') THEN (w.wedding_date - (8 - p) * 30 - 2)::timestamp
                    AT TIME ZONE 'UTC' + interval '14 hours 3 minutes 7.25 seconds' END,
           w.created_at + p * interval '1 day',
           w.updated_at + p * interval '1 minute'
    FROM public.weddings w, generate_series(1, 8) p,
         LATERAL (SELECT (ARRAY['paid', 'paid', 'paid', 'pending', 'refunded', 'failed'])
                      [1 + demo.h((w.id - 1) * 8 + p, 90) % 6]::public.payment_status AS st) s
    WHERE w.id BETWEEN lo AND hi;

    INSERT INTO public.files (id, wedding_id, kind, storage_path, mime_type, size_bytes, checksum, thumbnail,
                              metadata, uploaded_by, created_at, updated_at)
    SELECT demo.uid('file', (w.id - 1) * 30 + f), w.id,
           CASE WHEN f <= 25 THEN 'photo'::public.file_kind ELSE 'document'::public.file_kind END,
           path,
           CASE WHEN f <= 25 THEN 'image/jpeg' ELSE 'application/pdf' END,
           50000 + demo.h((w.id - 1) * 30 + f, 100) % 12000000,
           sha256(convert_to(path, 'UTF8')),
           CASE WHEN f <= 25 AND f % 5 = 0 THEN decode(repeat(md5(path), 8), 'hex') END,
           CASE WHEN f > 25 THEN jsonb_build_object('pages', 1 + f % 9, 'title', 'Contrat n° ' || f)
                ELSE jsonb_build_object('width', 6000, 'height', 4000, 'camera', 'Canon EOS R5',
                                        'iso', 100 * (1 + f % 16), 'exposure', '1/' || (125 * f),
                                        'gps', CASE WHEN f % 3 = 0 THEN jsonb_build_array(51.5 + f / 1000.0, -0.12) END)
           END,
           CASE WHEN f % 4 = 0 THEN NULL ELSE demo.uid('user', (w.id - 1) / 5 + 1) END,
           w.created_at + f * interval '1 hour',
           w.updated_at
    FROM public.weddings w, generate_series(1, 30) f,
         LATERAL (SELECT 'weddings/' || w.id || '/' || CASE WHEN f <= 25 THEN 'photos/IMG_' || lpad(f::text, 4, '0')
                          || '.jpg' ELSE 'documents/contract-' || f || '.pdf' END AS path) p
    WHERE w.id BETWEEN lo AND hi;

    -- 40 messages per wedding plus exact duplicates of two of them (retried sends, no primary key).
    INSERT INTO public.communications (wedding_id, channel, direction, recipient, subject, body, sent_at, created_at)
    SELECT w.id,
           (enum_range(NULL::public.comm_channel))[1 + demo.h((w.id - 1) * 40 + m, 110) % 4],
           CASE WHEN m % 3 = 0 THEN 'inbound' ELSE 'outbound' END,
           'couple' || w.id || '@example.net',
           CASE WHEN m % 8 = 0 THEN NULL ELSE 'Re: your wedding on ' || to_char(w.wedding_date, 'DD Mon YYYY') || ' 💌' END,
           CASE WHEN m = 7 OR m = 23 THEN
                    -- ~3 kB body; the column is STORAGE EXTERNAL so it lives uncompressed in TOAST.
                    repeat('Bonjour ! Voici le programme détaillé de la journée, les horaires et les contacts. ', 40)
                ELSE 'Hi ' || demo.first_name(demo.h(w.id, 12)) || ', just confirming message ' || m || '. Cheers!' END,
           CASE WHEN m = 40 THEN NULL ELSE w.created_at + m * interval '3 days' END,
           w.created_at + m * interval '3 days'
    FROM public.weddings w, generate_series(1, 40) m, generate_series(1, 2) dup
    WHERE w.id BETWEEN lo AND hi AND (dup = 1 OR m IN (5, 20));

    INSERT INTO audit.audit_logs (id, wedding_id, actor_id, action, table_name, row_pk, old_data, new_data,
                                  ip_address, created_at)
    OVERRIDING SYSTEM VALUE
    SELECT (w.id - 1) * 30 + a, w.id,
           CASE WHEN a % 10 = 0 THEN NULL ELSE demo.uid('user', (w.id - 1) / 5 + 1) END,
           (ARRAY['insert', 'update', 'update', 'delete'])[1 + a % 4],
           (ARRAY['guests', 'timeline_events', 'payments', 'files', 'weddings'])[1 + a % 5],
           ((w.id - 1) * 150 + a)::text,
           CASE WHEN a % 4 = 0 THEN NULL ELSE jsonb_build_object('rsvp', 'pending', 'table_number', NULL) END,
           CASE WHEN a % 4 = 3 THEN NULL
                ELSE jsonb_build_object('rsvp', 'attending', 'table_number', a % 18, 'by', 'app') END,
           CASE WHEN a % 9 = 0 THEN NULL
                ELSE ('10.' || (w.id / 65536) % 256 || '.' || (w.id / 256) % 256 || '.' || w.id % 256)::inet END,
           w.created_at + a * interval '5 hours 17 minutes'
    FROM public.weddings w, generate_series(1, 30) a
    WHERE w.id BETWEEN lo AND hi;

    -- Events spread over ~18 months before each wedding: monthly partitions 2024-2025 plus the default one.
    INSERT INTO platform.event_logs (id, wedding_id, event_type, payload, occurred_at, created_at)
    SELECT (w.id - 1) * 100 + e, w.id,
           (ARRAY['page_view', 'guest_added', 'rsvp_received', 'payment_made', 'file_uploaded'])[1 + e % 5],
           jsonb_build_object('session', md5(w.id || ':' || e), 'path', '/weddings/' || w.id,
                              'ua', CASE WHEN e % 2 = 0 THEN 'Mozilla/5.0' ELSE 'WedSyncApp/4.2 (iOS)' END),
           ts, ts
    FROM public.weddings w, generate_series(1, 100) e,
         LATERAL (SELECT (w.wedding_date + time '12:00') AT TIME ZONE 'UTC'
                         - (demo.h((w.id - 1) * 100 + e, 120) % 780000) * interval '1 minute' AS ts) t
    WHERE w.id BETWEEN lo AND hi;
END;
$fn$;

-- Moves every sequence past the loaded ids, refreshes the materialized view and runs ANALYZE
-- (a partitioned table's ANALYZE covers its partitions too).
CREATE OR REPLACE FUNCTION demo.seed_finish() RETURNS void
    LANGUAGE plpgsql AS
$fn$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT n.nspname AS schema_name, c.relname AS table_name, a.attname AS column_name,
               pg_get_serial_sequence(format('%I.%I', n.nspname, c.relname), a.attname) AS seq
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('public', 'audit', 'platform') AND c.relkind IN ('r', 'p')
          AND NOT c.relispartition AND a.attnum > 0 AND NOT a.attisdropped
          AND pg_get_serial_sequence(format('%I.%I', n.nspname, c.relname), a.attname) IS NOT NULL
    LOOP
        EXECUTE format('SELECT setval(%L, coalesce((SELECT max(%I) FROM %I.%I), 0) + 1, false)',
                       r.seq, r.column_name, r.schema_name, r.table_name);
    END LOOP;
    PERFORM setval('platform.invoice_number_seq',
                   greatest(100001, coalesce((SELECT max(invoice_number) FROM public.payments), 0) + 1), false);
    REFRESH MATERIALIZED VIEW public.wedding_rsvp_stats;
    FOR r IN
        SELECT c.oid::regclass AS rel
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('public', 'audit', 'platform') AND c.relkind IN ('r', 'p', 'm')
          AND NOT c.relispartition
    LOOP
        EXECUTE format('ANALYZE %s', r.rel);
    END LOOP;
END;
$fn$;

-- Single-session convenience: the whole data set for a scale factor. Returns the number of weddings.
CREATE OR REPLACE FUNCTION demo.seed(scale numeric) RETURNS integer
    LANGUAGE plpgsql AS
$fn$
DECLARE
    n integer := demo.weddings_for_scale(scale);
BEGIN
    PERFORM demo.seed_base(n);
    PERFORM demo.seed_weddings(1, n);
    PERFORM demo.seed_finish();
    RETURN n;
END;
$fn$;
