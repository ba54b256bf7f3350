-- WedSync demo platform schema (PostgreSQL 15, Supabase-style).
--
-- Built to exercise everything a backup must bring back: foreign keys, partial and expression indexes,
-- identity columns (ALWAYS and BY DEFAULT), serials and a standalone sequence, enums, a domain with a
-- CHECK, a stored generated column, jsonb, text[], bytea, ranges, inet, a range-partitioned table with a
-- DEFAULT partition, a view and a materialized view, trigger functions, row level security, a table
-- without a primary key, non-public schemas, comments and out-of-line (TOASTed) values.
-- Every per-wedding table carries wedding_id so one wedding can be restored alone.
-- No roles and no extensions: gen_random_uuid() is core since PostgreSQL 13.

CREATE SCHEMA IF NOT EXISTS platform;
COMMENT ON SCHEMA platform IS 'Platform internals: event stream and reference sequences.';
CREATE SCHEMA IF NOT EXISTS audit;
COMMENT ON SCHEMA audit IS 'Append-only audit trail of changes made by people.';

-- Types ------------------------------------------------------------------------------------------------

CREATE TYPE public.rsvp_status AS ENUM ('pending', 'attending', 'declined', 'maybe');
CREATE TYPE public.wedding_status AS ENUM ('enquiry', 'booked', 'planning', 'completed', 'cancelled');
CREATE TYPE public.payment_status AS ENUM ('pending', 'paid', 'refunded', 'failed');
CREATE TYPE public.supplier_category AS ENUM
    ('photographer', 'venue', 'florist', 'caterer', 'planner', 'band', 'dj', 'cake', 'videographer');
CREATE TYPE public.file_kind AS ENUM ('photo', 'document');
CREATE TYPE public.comm_channel AS ENUM ('email', 'sms', 'whatsapp', 'in_app');

CREATE DOMAIN public.email_address AS text
    CHECK (VALUE ~ '^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$');
COMMENT ON DOMAIN public.email_address IS 'An e-mail address: something@domain.tld, no spaces.';

CREATE DOMAIN public.money_amount AS numeric(12, 2) CHECK (VALUE >= 0);

-- Standalone sequence (not owned by any column) feeding payments.invoice_number.
CREATE SEQUENCE platform.invoice_number_seq START WITH 100001 INCREMENT BY 1;
COMMENT ON SEQUENCE platform.invoice_number_seq IS 'Human-facing invoice numbers, shared by all suppliers.';

-- Trigger functions ------------------------------------------------------------------------------------

CREATE FUNCTION public.set_updated_at() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION public.set_updated_at() IS 'Keeps updated_at current on UPDATE (inserts keep theirs).';

CREATE FUNCTION public.normalise_guest() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    -- Idempotent clean-up, safe to fire again when data is reloaded.
    NEW.first_name := btrim(NEW.first_name);
    NEW.last_name := btrim(NEW.last_name);
    IF NEW.email IS NOT NULL THEN
        NEW.email := lower(NEW.email);
    END IF;
    RETURN NEW;
END;
$$;

-- Accounts ---------------------------------------------------------------------------------------------

CREATE TABLE public.organizations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    slug        text NOT NULL UNIQUE,
    country     char(2) NOT NULL DEFAULT 'GB',
    settings    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.organizations IS 'A wedding business (tenant) with one or more suppliers.';

CREATE TABLE public.users (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid REFERENCES public.organizations (id) ON DELETE SET NULL,
    email            public.email_address NOT NULL,
    phone            text,
    last_sign_in_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.users IS 'Login accounts: supplier staff and couples.';
CREATE UNIQUE INDEX users_email_lower_key ON public.users (lower(email));
CREATE INDEX users_organization_id_idx ON public.users (organization_id);

CREATE TABLE public.user_profiles (
    user_id       uuid PRIMARY KEY REFERENCES public.users (id) ON DELETE CASCADE,
    display_name  text NOT NULL,
    locale        text NOT NULL DEFAULT 'en-GB',
    avatar        bytea,
    preferences   jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.user_profiles IS 'Display data for a user, one row per user.';
COMMENT ON COLUMN public.user_profiles.avatar IS 'Small avatar image bytes (bytea).';

CREATE TABLE public.suppliers (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    owner_user_id    uuid REFERENCES public.users (id),
    business_name    text NOT NULL,
    category         public.supplier_category NOT NULL,
    contact_email    public.email_address,
    tags             text[] NOT NULL DEFAULT '{}',
    settings         jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.suppliers IS 'A wedding supplier using the platform (photographer, venue, ...).';
CREATE INDEX suppliers_organization_id_idx ON public.suppliers (organization_id);

CREATE TABLE public.clients (
    id           bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    supplier_id  bigint NOT NULL REFERENCES public.suppliers (id) ON DELETE CASCADE,
    user_id      uuid REFERENCES public.users (id) ON DELETE SET NULL,
    partner1     text NOT NULL,
    partner2     text,
    email        public.email_address,
    phone        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.clients IS 'A couple who hired a supplier.';
CREATE INDEX clients_supplier_id_idx ON public.clients (supplier_id);

-- Weddings ---------------------------------------------------------------------------------------------

CREATE TABLE public.weddings (
    id                    bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    organization_id       uuid NOT NULL REFERENCES public.organizations (id),
    supplier_id           bigint NOT NULL REFERENCES public.suppliers (id),
    client_id             bigint NOT NULL REFERENCES public.clients (id),
    wedding_date          date NOT NULL,
    venue_name            text,
    venue_address         text,
    guest_count_estimate  integer CHECK (guest_count_estimate >= 0),
    budget                public.money_amount,
    status                public.wedding_status NOT NULL DEFAULT 'enquiry',
    theme                 jsonb,
    tags                  text[],
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.weddings IS 'One wedding: the unit a single-wedding restore brings back.';
COMMENT ON COLUMN public.weddings.wedding_date IS 'The day itself (a date, no time zone).';
CREATE INDEX weddings_wedding_date_idx ON public.weddings (wedding_date);
CREATE INDEX weddings_client_id_idx ON public.weddings (client_id);
CREATE INDEX weddings_supplier_id_idx ON public.weddings (supplier_id);
CREATE INDEX weddings_tags_gin_idx ON public.weddings USING gin (tags);
CREATE TRIGGER weddings_set_updated_at BEFORE UPDATE ON public.weddings
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

CREATE TABLE public.guests (
    id            bigserial PRIMARY KEY,
    wedding_id    bigint NOT NULL REFERENCES public.weddings (id) ON DELETE CASCADE,
    first_name    text NOT NULL,
    last_name     text NOT NULL,
    full_name     text GENERATED ALWAYS AS (first_name || ' ' || last_name) STORED,
    email         public.email_address,
    rsvp          public.rsvp_status NOT NULL DEFAULT 'pending',
    dietary       jsonb,
    plus_one      boolean NOT NULL DEFAULT false,
    table_number  smallint,
    notes         text,
    tags          text[],
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.guests IS 'Invited guests of a wedding with their RSVP and dietary needs.';
COMMENT ON COLUMN public.guests.dietary IS 'jsonb: {"diet": ..., "allergies": [...], "notes": ...}.';
CREATE INDEX guests_wedding_id_idx ON public.guests (wedding_id);
CREATE INDEX guests_pending_rsvp_idx ON public.guests (wedding_id) WHERE rsvp = 'pending';
CREATE TRIGGER guests_set_updated_at BEFORE UPDATE ON public.guests
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();
CREATE TRIGGER guests_normalise BEFORE INSERT OR UPDATE OF first_name, last_name, email ON public.guests
    FOR EACH ROW EXECUTE FUNCTION public.normalise_guest();

CREATE TABLE public.timeline_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wedding_id  bigint NOT NULL REFERENCES public.weddings (id) ON DELETE CASCADE,
    title       text NOT NULL,
    starts_at   timestamptz NOT NULL,
    duration    interval NOT NULL DEFAULT '30 minutes',
    location    text,
    sort_order  integer NOT NULL,
    details     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (wedding_id, sort_order)
);
COMMENT ON TABLE public.timeline_events IS 'The running order of the day.';

CREATE TABLE public.vendors (
    id               serial PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    name             text NOT NULL,
    category         public.supplier_category NOT NULL,
    contact          jsonb,
    rating           numeric(3, 2) CHECK (rating BETWEEN 0 AND 5),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.vendors IS 'Third-party vendors an organization books for its weddings.';

CREATE TABLE public.bookings (
    id              bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    wedding_id      bigint NOT NULL REFERENCES public.weddings (id) ON DELETE CASCADE,
    vendor_id       integer NOT NULL REFERENCES public.vendors (id),
    status          text NOT NULL DEFAULT 'requested'
                    CHECK (status IN ('requested', 'confirmed', 'cancelled')),
    amount          public.money_amount NOT NULL,
    deposit         numeric(12, 2),
    service_window  tstzrange,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.bookings IS 'A vendor booked for a wedding.';
CREATE INDEX bookings_wedding_id_idx ON public.bookings (wedding_id);

-- Forms and journeys -----------------------------------------------------------------------------------

CREATE TABLE public.forms (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    supplier_id  bigint NOT NULL REFERENCES public.suppliers (id) ON DELETE CASCADE,
    title        text NOT NULL,
    definition   jsonb NOT NULL,
    published    boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.forms IS 'Questionnaires a supplier sends to couples (definition is large jsonb).';

CREATE TABLE public.form_responses (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    form_id       uuid NOT NULL REFERENCES public.forms (id) ON DELETE CASCADE,
    wedding_id    bigint NOT NULL REFERENCES public.weddings (id) ON DELETE CASCADE,
    answers       jsonb NOT NULL,
    submitted_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.form_responses IS 'A couple''s answers to a form.';
CREATE INDEX form_responses_wedding_id_idx ON public.form_responses (wedding_id);

CREATE TABLE public.journey_instances (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    wedding_id    bigint NOT NULL REFERENCES public.weddings (id) ON DELETE CASCADE,
    journey_name  text NOT NULL,
    current_step  integer NOT NULL DEFAULT 0,
    state         jsonb NOT NULL DEFAULT '{}'::jsonb,
    started_at    timestamptz NOT NULL,
    completed_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.journey_instances IS 'Automated customer journeys (e-mail sequences) per wedding.';
CREATE INDEX journey_instances_wedding_id_idx ON public.journey_instances (wedding_id);

-- Money ------------------------------------------------------------------------------------------------

CREATE TABLE public.payments (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wedding_id      bigint NOT NULL REFERENCES public.weddings (id) ON DELETE CASCADE,
    client_id       bigint NOT NULL REFERENCES public.clients (id),
    invoice_number  bigint NOT NULL DEFAULT nextval('platform.invoice_number_seq') UNIQUE,
    amount          public.money_amount NOT NULL,
    currency        char(3) NOT NULL DEFAULT 'GBP',
    status          public.payment_status NOT NULL DEFAULT 'pending',
    due_date        date,
    paid_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.payments IS 'Invoices and payments between couples and suppliers.';
COMMENT ON COLUMN public.payments.amount IS 'numeric(12,2): never a float for money.';
CREATE INDEX payments_wedding_id_idx ON public.payments (wedding_id);
CREATE INDEX payments_unpaid_idx ON public.payments (due_date) WHERE status = 'pending';

-- Files and communications -----------------------------------------------------------------------------

CREATE TABLE public.files (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    wedding_id    bigint NOT NULL REFERENCES public.weddings (id) ON DELETE CASCADE,
    kind          public.file_kind NOT NULL,
    storage_path  text NOT NULL,
    mime_type     text NOT NULL,
    size_bytes    bigint NOT NULL,
    checksum      bytea NOT NULL,
    thumbnail     bytea,
    metadata      jsonb,
    uploaded_by   uuid REFERENCES public.users (id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.files IS 'Photo and document metadata; the bytes live in object storage.';
COMMENT ON COLUMN public.files.checksum IS 'SHA-256 of the stored object (bytea).';
CREATE INDEX files_wedding_id_idx ON public.files (wedding_id, kind);

-- No primary key on purpose: message retries may store the very same row twice.
CREATE TABLE public.communications (
    wedding_id  bigint NOT NULL REFERENCES public.weddings (id) ON DELETE CASCADE,
    channel     public.comm_channel NOT NULL,
    direction   text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    recipient   text,
    subject     text,
    body        text,
    sent_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE public.communications ALTER COLUMN body SET STORAGE EXTERNAL;
COMMENT ON TABLE public.communications IS 'Messages sent to and from couples. No primary key: duplicates exist.';
CREATE INDEX communications_wedding_id_idx ON public.communications (wedding_id, sent_at);

-- Audit and events -------------------------------------------------------------------------------------

CREATE TABLE audit.audit_logs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wedding_id  bigint REFERENCES public.weddings (id) ON DELETE SET NULL,
    actor_id    uuid REFERENCES public.users (id) ON DELETE SET NULL,
    action      text NOT NULL,
    table_name  text NOT NULL,
    row_pk      text,
    old_data    jsonb,
    new_data    jsonb,
    ip_address  inet,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE audit.audit_logs IS 'Who changed what; wedding_id is NULL for platform-level actions.';
CREATE INDEX audit_logs_wedding_id_idx ON audit.audit_logs (wedding_id) WHERE wedding_id IS NOT NULL;

CREATE TABLE platform.event_logs (
    id           bigserial,
    wedding_id   bigint,
    event_type   text NOT NULL,
    payload      jsonb NOT NULL DEFAULT '{}'::jsonb,
    occurred_at  timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
COMMENT ON TABLE platform.event_logs IS 'Product analytics events, partitioned by month of occurred_at.';
CREATE INDEX event_logs_wedding_id_idx ON platform.event_logs (wedding_id, occurred_at);

DO $$
DECLARE
    m date;
BEGIN
    FOR m IN SELECT generate_series(date '2024-01-01', date '2025-12-01', interval '1 month')::date LOOP
        EXECUTE format(
            'CREATE TABLE platform.%I PARTITION OF platform.event_logs FOR VALUES FROM (%L) TO (%L)',
            'event_logs_' || to_char(m, 'YYYY_MM'), m::timestamptz, (m + interval '1 month')::timestamptz);
    END LOOP;
END;
$$;
CREATE TABLE platform.event_logs_default PARTITION OF platform.event_logs DEFAULT;
COMMENT ON TABLE platform.event_logs_default IS 'Events outside the monthly partitions (2024-2025).';

-- Views ------------------------------------------------------------------------------------------------

CREATE VIEW public.wedding_overview AS
SELECT w.id AS wedding_id,
       w.wedding_date,
       w.status,
       s.business_name AS supplier,
       c.partner1 || coalesce(' & ' || c.partner2, '') AS couple,
       w.budget
FROM public.weddings w
JOIN public.suppliers s ON s.id = w.supplier_id
JOIN public.clients c ON c.id = w.client_id;
COMMENT ON VIEW public.wedding_overview IS 'One line per wedding for dashboards.';

CREATE MATERIALIZED VIEW public.wedding_rsvp_stats AS
SELECT wedding_id,
       count(*) AS invited,
       count(*) FILTER (WHERE rsvp = 'attending') AS attending,
       count(*) FILTER (WHERE rsvp = 'declined') AS declined,
       count(*) FILTER (WHERE rsvp = 'pending') AS pending
FROM public.guests
GROUP BY wedding_id
WITH NO DATA;
CREATE UNIQUE INDEX wedding_rsvp_stats_wedding_id_key ON public.wedding_rsvp_stats (wedding_id);
COMMENT ON MATERIALIZED VIEW public.wedding_rsvp_stats IS 'RSVP counts per wedding, refreshed after loads.';

-- Row level security -----------------------------------------------------------------------------------
-- The application sets app.current_org / app.current_user_id per request; owners and superusers (the
-- backup) bypass these policies.

ALTER TABLE public.weddings ENABLE ROW LEVEL SECURITY;
CREATE POLICY weddings_tenant ON public.weddings
    USING (organization_id::text = current_setting('app.current_org', true));

ALTER TABLE public.guests ENABLE ROW LEVEL SECURITY;
CREATE POLICY guests_tenant ON public.guests
    USING (EXISTS (SELECT 1 FROM public.weddings w WHERE w.id = guests.wedding_id));

ALTER TABLE public.payments ENABLE ROW LEVEL SECURITY;
CREATE POLICY payments_tenant_read ON public.payments FOR SELECT
    USING (EXISTS (SELECT 1 FROM public.weddings w WHERE w.id = payments.wedding_id));
CREATE POLICY payments_owner_write ON public.payments FOR INSERT
    WITH CHECK (current_user = 'postgres' OR current_setting('app.role', true) = 'finance');

ALTER TABLE public.user_profiles ENABLE ROW LEVEL SECURITY;
CREATE POLICY user_profiles_self ON public.user_profiles
    USING (user_id::text = current_setting('app.current_user_id', true));

ALTER TABLE audit.audit_logs ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_logs_read_own_org ON audit.audit_logs FOR SELECT
    USING (wedding_id IS NULL OR EXISTS (SELECT 1 FROM public.weddings w WHERE w.id = audit_logs.wedding_id));
